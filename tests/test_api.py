"""REST, WHIP/WHEP doors and the event WebSocket: jurisdiction and bad input."""

from __future__ import annotations

import re

import aiohttp
import pytest
from aiohttp import WSMsgType
from aiohttp.test_utils import TestServer

from client import bot
from hub.config import DEMO_SITES, Settings
from hub.core.livestate import MemoryLiveState
from hub.core.quotas import Limits
from hub.core.rooms import Rooms
from hub.core.sites import load_sites_file
from hub.core.tokens import Claims, issue
from hub.media.router import Router
from signaling.app import make_app

from .conftest import HubProcess

PROBLEM = "application/problem+json"


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def offer_sdp(kinds: tuple[str, ...] = ("video",)) -> str:
    from aiortc import RTCPeerConnection

    pc = RTCPeerConnection(bot.NO_ICE_SERVERS)
    for kind in kinds:
        pc.addTransceiver(kind, direction="recvonly")
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    return sdp


def bare_rooms() -> Rooms:
    """Rooms on memory and no media: an app with none of the features' services."""
    router = Router(None, 1 << 20, 0.5, [], 10.0)
    limits = Limits(4, 50, 64, 1000, 20, 600.0, 10.0)
    return Rooms(load_sites_file(DEMO_SITES), MemoryLiveState("test"), router, "test", "http://127.0.0.1", limits)


async def test_openapi_lists_every_route(hub: HubProcess, http: aiohttp.ClientSession):
    async with http.get(f"{hub.url}/api/openapi.json") as r:
        doc = await r.json()
    assert doc["openapi"].startswith("3.")
    routes = set()
    for route in make_app(bare_rooms(), Settings(), "unused").router.routes():  # type: ignore[arg-type]
        info = route.resource.get_info() if route.resource else {}
        path = info.get("path") or info.get("formatter") or (info.get("prefix", "") + "/{path}")
        if route.method != "HEAD":
            routes.add((re.sub(r"\{filename.*\}", "{path}", path), route.method.lower()))
    documented = {(path, method) for path, item in doc["paths"].items() for method in item}
    assert routes - documented == set()
    assert documented - routes == set()


@pytest.mark.parametrize(
    "path", ["/api/cameras", "/api/cases", "/api/calls", "/api/snapshots", "/api/trainings", "/api/rooms/r/recording"]
)
async def test_a_feature_this_process_does_not_run_answers_503(http: aiohttp.ClientSession, path: str):
    """make_app without a feature's service (signaling.problems.service): a problem, not a crash."""
    secret = "s" * 32
    app = make_app(bare_rooms(), Settings(), secret)  # type: ignore[arg-type]
    async with TestServer(app, host="127.0.0.1") as server:
        token = issue(secret, Claims(user="op", site="guinan", role="operator"))
        async with http.get(server.make_url(path), headers=auth(token)) as r:
            assert r.status == 503 and r.content_type == PROBLEM
            assert (await r.json(content_type=None))["detail"].startswith("this hub process ")


async def test_site_api_follows_jurisdiction(hub: HubProcess, http: aiohttp.ClientSession):
    township = hub.token("op-guomaying", "guomaying", "operator")
    async with http.get(f"{hub.url}/api/sites", headers=auth(township)) as r:
        ids = [s["id"] for s in await r.json()]
    assert ids == ["guomaying", "rianxiuma", "shangzhai"]
    async with http.get(f"{hub.url}/api/sites/rianxiuma", headers=auth(township)) as r:
        site = await r.json()
        assert r.status == 200
    assert site | {"children": []} == site
    assert {site[k] for k in ("id", "level", "parent", "room_id")} == {
        "rianxiuma",
        "village",
        "guomaying",
        "site-rianxiuma",
    }
    for outside in ("guinan", "minkang", "qinghai"):  # above, beside, root
        async with http.get(f"{hub.url}/api/sites/{outside}", headers=auth(township)) as r:
            assert r.status == 403
            assert r.content_type == PROBLEM
            assert (await r.json())["status"] == 403
    async with http.get(f"{hub.url}/api/sites/nowhere", headers=auth(township)) as r:
        assert r.status == 404 and r.content_type == PROBLEM


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer nonsense"}, {"Authorization": "Basic abc"}],
)
async def test_no_or_bad_token_is_401_everywhere(hub: HubProcess, http: aiohttp.ClientSession, headers):
    for method, path in [
        ("GET", "/api/sites"),
        ("GET", "/api/rooms/site-taizi"),
        ("POST", "/whip/site-taizi"),
        ("POST", "/whep/anything"),
        ("GET", "/api/me"),
        ("GET", "/ws"),
    ]:
        async with http.request(method, hub.url + path, headers=headers) as r:
            assert r.status == 401, (method, path)
            assert r.content_type == PROBLEM


async def test_expired_token_is_401(hub: HubProcess, http: aiohttp.ClientSession):
    import asyncio

    token = hub.token("late", "qinghai", "operator", ttl=1)
    await asyncio.sleep(2.1)
    async with http.get(f"{hub.url}/api/me", headers=auth(token)) as r:
        assert r.status == 401
        assert "expired" in (await r.json())["detail"]


async def test_whip_whep_jurisdiction(hub: HubProcess, http: aiohttp.ClientSession):
    """A township operator views its own village (201), not another township's (403)."""
    chengtai = hub.token("op-chengtai", "chengtai", "operator")
    qutan = hub.token("op-qutan", "qutan", "operator")
    taizi_publisher = await bot.publish(
        http,
        hub.url,
        hub.token("m-taizi", "taizi", "mediator"),
        "site-taizi",
        [bot.SyntheticVideo("vp8", 160, 120, 15)],
    )
    try:
        offer = await offer_sdp()
        for token, status in [(qutan, 403), (chengtai, 201)]:
            async with http.post(
                f"{hub.url}/whep/{taizi_publisher.resource_id}",
                data=offer,
                headers=auth(token) | {"Content-Type": "application/sdp"},
            ) as r:
                assert r.status == status, await r.text()
                if status == 201:
                    location = r.headers["Location"]
                    assert location.startswith(f"/whep/{taizi_publisher.resource_id}/")
        async with http.delete(hub.url + location, headers=auth(qutan)) as r:
            assert r.status == 403
        another_viewer = hub.token("m-chengtai", "chengtai", "mediator")
        async with http.delete(hub.url + location, headers=auth(another_viewer)) as r:
            assert r.status == 403
        async with http.delete(hub.url + location, headers=auth(chengtai)) as r:
            assert r.status == 200
        async with http.delete(hub.url + location, headers=auth(chengtai)) as r:
            assert r.status == 404
        # Publishing beside one's jurisdiction is refused before any SDP is read.
        async with http.post(
            f"{hub.url}/whip/site-qutancun", data=offer, headers=auth(chengtai) | {"Content-Type": "application/sdp"}
        ) as r:
            assert r.status == 403
        # Nor may another site end the stream.
        async with http.delete(taizi_publisher.location, headers=auth(qutan)) as r:
            assert r.status == 403
    finally:
        await taizi_publisher.close()


async def test_guest_token_reaches_its_room_only(hub: HubProcess, http: aiohttp.ClientSession):
    guest = hub.token("party-1", "hongzhuang", "guest", room="site-hongzhuang")
    async with http.get(f"{hub.url}/api/rooms/site-hongzhuang", headers=auth(guest)) as r:
        assert r.status == 200
        assert (await r.json())["site_id"] == "hongzhuang"
    async with http.get(f"{hub.url}/api/rooms/site-taizi", headers=auth(guest)) as r:
        assert r.status == 403
    async with http.get(f"{hub.url}/api/sites/hongzhuang", headers=auth(guest)) as r:
        assert r.status == 403
    publisher = await bot.publish(http, hub.url, guest, "site-hongzhuang", [bot.SyntheticVideo("vp8", 160, 120, 15)])
    try:
        async with http.post(
            f"{hub.url}/whip/site-taizi",
            data=await offer_sdp(),
            headers=auth(guest) | {"Content-Type": "application/sdp"},
        ) as r:
            assert r.status == 403
    finally:
        await publisher.close()


@pytest.mark.parametrize(
    ("body", "content_type", "status"),
    [
        ("this is not sdp", "application/sdp", 400),
        ("v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n", "application/sdp", 400),
        ("v=0\r\n" + "a=x\r\n" * 40000, "application/sdp", 413),
        ("{}", "application/json", 415),
    ],
)
async def test_bad_offers_are_refused_and_change_nothing(
    hub: HubProcess, http: aiohttp.ClientSession, body: str, content_type: str, status: int
):
    token = hub.token("m-xinzhuang", "xinzhuang", "mediator")
    async with http.post(
        f"{hub.url}/whip/site-xinzhuang", data=body, headers=auth(token) | {"Content-Type": content_type}
    ) as r:
        assert r.status == status
        assert r.content_type == PROBLEM
        assert (await r.json())["title"]
    async with http.get(f"{hub.url}/api/rooms/site-xinzhuang", headers=auth(token)) as r:
        room = await r.json()
    assert room["streams"] == [] and room["participants"] == []
    async with http.get(f"{hub.url}/healthz") as r:
        assert (await r.json())["status"] == "ok"


async def test_unknown_room_and_stream(hub: HubProcess, http: aiohttp.ClientSession):
    token = hub.token("root-op", "qinghai", "operator")
    headers = auth(token) | {"Content-Type": "application/sdp"}
    offer = await offer_sdp()
    async with http.post(f"{hub.url}/whip/room-nope", data=offer, headers=headers) as r:
        assert r.status == 404 and r.content_type == PROBLEM
    async with http.post(f"{hub.url}/whep/nope", data=offer, headers=headers) as r:
        assert r.status == 404 and r.content_type == PROBLEM
    async with http.get(f"{hub.url}/api/rooms/room-nope", headers=auth(token)) as r:
        assert r.status == 404


async def test_open_room_and_list(hub: HubProcess, http: aiohttp.ClientSession):
    mediator = hub.token("m-guomaying", "guomaying", "mediator")
    county = await http.ws_connect(f"{hub.url}/ws?token={hub.token('op-guinan', 'guinan', 'operator')}")
    beside = await http.ws_connect(f"{hub.url}/ws?token={hub.token('op-golmud', 'golmud', 'operator')}")
    for ws in (county, beside):
        assert (await ws.receive_json(timeout=5))["type"] == "hello"
    async with http.post(
        f"{hub.url}/api/rooms",
        json={"site_id": "shangzhai", "kind": "mediation", "title": "土地纠纷"},
        headers=auth(mediator),
    ) as r:
        assert r.status == 201
        room = await r.json()
    async with http.post(
        f"{hub.url}/api/rooms", json={"site_id": "guinan", "kind": "mediation"}, headers=auth(mediator)
    ) as r:
        assert r.status == 403
    async with http.post(
        f"{hub.url}/api/rooms", json={"site_id": "shangzhai", "kind": "party"}, headers=auth(mediator)
    ) as r:
        assert r.status == 400
    # The county above hears of the new room without having joined anything; Golmud does not.
    announced = await county.receive_json(timeout=5)
    assert announced["type"] == "room-opened" and announced["room"]["id"] == room["id"]
    await beside.send_json({"type": "ping"})
    assert (await beside.receive_json(timeout=5))["type"] == "pong"
    await county.close()
    await beside.close()
    async with http.get(f"{hub.url}/api/rooms", headers=auth(mediator)) as r:
        assert room["id"] in [x["id"] for x in await r.json()]
    async with http.get(f"{hub.url}/api/rooms", headers=auth(hub.token("op-golmud", "golmud", "operator"))) as r:
        assert room["id"] not in [x["id"] for x in await r.json()]


async def test_websocket_roster_events_and_bad_messages(hub: HubProcess, http: aiohttp.ClientSession):
    a = hub.token("m-zhaduo", "zhaduo", "mediator")
    b = hub.token("op-chenduo", "chenduo", "operator")
    async with http.ws_connect(f"{hub.url}/ws?token={a}") as wa, http.ws_connect(f"{hub.url}/ws?token={b}") as wb:
        assert (await wa.receive_json(timeout=5))["type"] == "hello"
        assert (await wb.receive_json(timeout=5))["type"] == "hello"
        await wa.send_json({"type": "join", "room": "site-zhaduo", "name": "扎朵调解员"})
        joined_a = await wa.receive_json(timeout=5)
        assert joined_a["type"] == "joined"
        assert [p["name"] for p in joined_a["participants"]] == ["扎朵调解员"]
        await wb.send_json({"type": "join", "room": "site-zhaduo"})
        joined_b = await wb.receive_json(timeout=5)
        assert len(joined_b["participants"]) == 2
        # a hears b arrive (after its own join event)
        seen = [await wa.receive_json(timeout=5) for _ in range(2)]
        assert seen[1]["type"] == "participant-joined" and seen[1]["participant"]["user"] == "op-chenduo"

        for bad, code in [
            ({"type": "shout"}, "bad-message"),
            ({"type": "join"}, "bad-message"),
            ({"type": "join", "room": "site-zhaduo", "extra": 1}, "bad-message"),
            ({"type": "join", "room": "site-minkang"}, "forbidden"),
            ({"type": "join", "room": "room-none"}, "not-found"),
            ({"type": "leave", "room": "site-minkang"}, "not-joined"),
        ]:
            await wa.send_json(bad)
            reply = await wa.receive_json(timeout=5)
            assert reply["type"] == "error" and reply["code"] == code, (bad, reply)
        await wa.send_str("not json")
        assert (await wa.receive_json(timeout=5))["code"] == "bad-message"

        # An oversized message closes that socket with 1009; others carry on.
        await wb.send_str("x" * 100_000)
        while (closing := await wb.receive(timeout=5)).type == WSMsgType.TEXT:
            pass  # events queued before the close
        assert closing.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.CLOSING)
        assert wb.close_code == 1009
        left = await wa.receive_json(timeout=5)
        assert left["type"] == "participant-left"
        await wa.send_json({"type": "ping"})
        assert (await wa.receive_json(timeout=5))["type"] == "pong"
    async with http.get(f"{hub.url}/api/rooms/site-zhaduo", headers=auth(b)) as r:
        assert (await r.json())["participants"] == []


async def test_offer_arriving_in_pieces_is_read_whole(hub: HubProcess, http: aiohttp.ClientSession):
    import asyncio

    token = hub.token("m-changjianglu", "changjianglu", "mediator")
    offer = (await offer_sdp(("video",))).encode()

    async def slowly():  # type: ignore[no-untyped-def]
        yield offer[:100]
        await asyncio.sleep(0.3)
        yield offer[100:]

    async with http.post(
        f"{hub.url}/whip/site-changjianglu", data=slowly(), headers=auth(token) | {"Content-Type": "application/sdp"}
    ) as r:
        assert r.status == 201, await r.text()
        location = r.headers["Location"]
    async with http.delete(hub.url + location, headers=auth(token)) as r:
        assert r.status == 200


async def test_watching_a_room_is_not_attending_it(hub: HubProcess, http: aiohttp.ClientSession):
    operator = hub.token("op-yinmajie", "yinmajie", "operator")
    mediator = hub.token("m-beidajie", "beidajie", "mediator")
    async with (
        http.ws_connect(f"{hub.url}/ws?token={operator}") as watcher,
        http.ws_connect(f"{hub.url}/ws?token={mediator}") as member,
    ):
        for ws in (watcher, member):
            assert (await ws.receive_json(timeout=5))["type"] == "hello"
        await watcher.send_json({"type": "join", "room": "site-beidajie", "watch": True})
        reply = await watcher.receive_json(timeout=5)
        assert reply["type"] == "joined" and reply["participant"] is None and reply["participants"] == []
        await member.send_json({"type": "join", "room": "site-beidajie"})
        assert (await member.receive_json(timeout=5))["type"] == "joined"
        event = await watcher.receive_json(timeout=5)
        assert event["type"] == "participant-joined" and event["participant"]["user"] == "m-beidajie"
        async with http.get(f"{hub.url}/api/rooms/site-beidajie", headers=auth(operator)) as r:
            assert [p["user"] for p in (await r.json())["participants"]] == ["m-beidajie"]
        await watcher.send_json({"type": "leave", "room": "site-beidajie"})
        assert (await watcher.receive_json(timeout=5))["type"] == "left"
