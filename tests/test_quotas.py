"""Quotas and rate limits: one client's burst costs only itself.

A real hub process with small limits, real event sockets, real aiortc offers
and publishers, and (for an event from another process) a real Redis.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiortc import RTCPeerConnection

from client.bot import NO_ICE_SERVERS, SyntheticVideo, publish
from hub.config import DEMO_SITES
from hub.core.livestate import MemoryLiveState
from hub.core.quotas import Limits, QuotaExceeded
from hub.core.records import Stream
from hub.core.rooms import Rooms
from hub.core.sites import load_sites_file
from hub.core.tokens import Claims
from hub.media.router import Router

from .conftest import EventSocket, HubProcess, start_hub, wait_until
from .fuzz.live import PacedSocket

PROBLEM = "application/problem+json"
CONNECT_SECONDS = 3
EMPTY_ROOM_SECONDS = 2
LIMITS = {
    "HUB_SESSION_CONNECT_SECONDS": str(CONNECT_SECONDS),
    "HUB_WHIP_SESSIONS_PER_USER": "2",
    "HUB_WHEP_SESSIONS_PER_USER": "2",
    "HUB_ROOMS_PER_SITE": "3",
    "HUB_EMPTY_ROOM_SECONDS": str(EMPTY_ROOM_SECONDS),
    "HUB_SNAPSHOT_SECONDS": "0",
}


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubProcess]:
    process = start_hub(tmp_path_factory.mktemp("quotas"), env=LIMITS)
    yield process
    process.stop()


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def offer_that_never_connects(direction: str = "sendonly") -> str:
    """A real aiortc offer whose peer is gone before the hub answers it."""
    pc = RTCPeerConnection(NO_ICE_SERVERS)
    pc.addTransceiver("video", direction=direction)
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    return sdp


async def post_offer(http: aiohttp.ClientSession, hub: HubProcess, token: str, room: str, sdp: str):  # type: ignore[no-untyped-def]
    headers = auth(token) | {"Content-Type": "application/sdp"}
    return await http.post(f"{hub.url}/whip/{room}", data=sdp, headers=headers)


async def joined(
    http: aiohttp.ClientSession, hub: HubProcess, token: str, room: str, watch: bool = False
) -> EventSocket:
    sock = await EventSocket.open(http, hub, token)
    await sock.ws.send_json({"type": "join", "room": room, "watch": watch})
    await sock.wait_for("joined")
    return sock


async def test_a_guests_chat_burst_costs_only_the_guest(limited: HubProcess, http: aiohttp.ClientSession) -> None:
    room = "site-rianxiuma"
    guest = await joined(http, limited, limited.sign("party-burst", "rianxiuma", "guest", room=room), room)
    member = await joined(http, limited, limited.sign("med-burst", "rianxiuma", "mediator"), room)
    province = await EventSocket.open(http, limited, limited.sign("op-qinghai", "qinghai", "operator"))
    await province.ws.send_json({"type": "monitor", "on": True})
    await province.wait_for("ack")
    haixi_token = limited.sign("op-haixi", "haixi", "operator")
    haixi = await joined(http, limited, haixi_token, "site-haixi")

    for i in range(3000):
        if guest.ws.closed:
            break
        try:
            await guest.ws.send_str(json.dumps({"type": "chat", "room": room, "text": f"灌水 {i}"}))
        except ConnectionError:
            break
    await wait_until(lambda: guest.ws.closed, 15)
    await asyncio.sleep(0.5)  # a socket closed for the burst would be closed by now
    # The other sockets are open and still get what is theirs.
    assert [s.ws.close_code for s in (province, haixi, member)] == [None] * 3
    await member.settle()

    assert guest.ws.close_code == 1008  # closed for flooding, not as too slow
    refused = [m for m in guest.of("error") if m["code"] == "rate-limited"]
    assert refused and refused[0]["retry_after"] >= 0
    chats = member.of("chat")
    # The default chat bucket lets 10 through at once, 2 a second after that.
    assert 1 <= len(chats) <= 20, len(chats)
    async with http.post(
        f"{limited.url}/api/rooms",
        json={"site_id": "golmud", "kind": "conference", "title": "after the burst"},
        headers=auth(haixi_token),
    ) as response:
        assert response.status == 201
        opened = await response.json()
    for sock in (province, haixi):
        event = await sock.wait_for("room-opened")
        assert event["room_id"] == opened["id"]
    for sock in (guest, member, province, haixi):
        await sock.close()


async def test_a_binary_flood_is_limited_too(limited: HubProcess, http: aiohttp.ClientSession) -> None:
    sock = await EventSocket.open(http, limited, limited.sign("bin-flood", "xinhua", "terminal"))
    for _ in range(200):
        if sock.ws.closed:
            break
        try:
            await sock.ws.send_bytes(b"\x00" * 100)
        except ConnectionError:
            break
    await wait_until(lambda: sock.ws.closed, 15)
    assert sock.ws.close_code == 1008
    assert {m["code"] for m in sock.of("error")} == {"bad-message", "rate-limited"}


async def test_a_paced_socket_keeps_to_the_message_rate(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    """The fuzz harness's bystander pings once per input; when inputs came faster than the
    hub's message rate its ping was refused as rate-limited, and it waited 30 s for a pong
    that never came (seen as a hang of the hub's event socket in fuzz_live_events)."""
    hub = start_hub(tmp_path, env={"HUB_WS_MESSAGES_PER_SECOND": "5", "HUB_WS_MESSAGE_BURST": "2"})
    try:
        ws = await http.ws_connect(f"{hub.url}/ws?token={hub.sign('op-ping', 'guinan', 'operator')}")
        assert (await ws.receive_json(timeout=10))["type"] == "hello"
        paced = PacedSocket(ws, 5)
        async with asyncio.timeout(10):  # 8 round trips at 5 a second; without pacing the third hangs
            for _ in range(8):
                assert await paced.round_trip() == []
        await ws.close()
    finally:
        hub.stop()


async def test_the_third_whip_session_of_a_user_gets_429(limited: HubProcess, http: aiohttp.ClientSession) -> None:
    token = limited.sign("party-quota", "shangzhai", "guest", room="site-shangzhai")
    for _ in range(2):
        async with await post_offer(http, limited, token, "site-shangzhai", await offer_that_never_connects()) as r:
            assert r.status == 201, await r.text()
    async with await post_offer(http, limited, token, "site-shangzhai", await offer_that_never_connects()) as r:
        assert r.status == 429
        assert r.content_type == PROBLEM
        problem = await r.json()
        retry_after = int(r.headers["Retry-After"])
    assert problem["status"] == 429 and "party-quota" in problem["detail"]
    assert 1 <= retry_after <= CONNECT_SECONDS
    # Another user's place is their own.
    other = limited.sign("party-other", "shangzhai", "guest", room="site-shangzhai")
    async with await post_offer(http, limited, other, "site-shangzhai", await offer_that_never_connects()) as r:
        assert r.status == 201
    # Retry-After told the truth: the sessions that never connected are gone by then.
    await asyncio.sleep(retry_after + 1)
    async with await post_offer(http, limited, token, "site-shangzhai", await offer_that_never_connects()) as r:
        assert r.status == 201, await r.text()


async def test_the_third_whep_session_of_a_user_gets_429(limited: HubProcess, http: aiohttp.ClientSession) -> None:
    publisher = limited.sign("cam-xinzhuang", "xinzhuang", "terminal")
    live = await publish(http, limited.url, publisher, "site-xinzhuang", [SyntheticVideo("vp8", 160, 120)])
    viewer = limited.sign("op-xinzhuang", "xinzhuang", "operator")
    headers = auth(viewer) | {"Content-Type": "application/sdp"}
    url = f"{limited.url}/whep/{live.resource_id}"
    try:
        for _ in range(2):
            async with http.post(url, data=await offer_that_never_connects("recvonly"), headers=headers) as r:
                assert r.status == 201, await r.text()
        async with http.post(url, data=await offer_that_never_connects("recvonly"), headers=headers) as r:
            assert r.status == 429 and r.content_type == PROBLEM
            assert 1 <= int(r.headers["Retry-After"]) <= CONNECT_SECONDS
            assert "viewing (WHEP)" in (await r.json())["detail"]
    finally:
        await live.close()


async def test_an_offer_that_never_connects_is_removed(limited: HubProcess, http: aiohttp.ClientSession) -> None:
    room = "site-minkang"
    watcher = await joined(http, limited, limited.sign("op-minkang", "minkang", "operator"), room, watch=True)
    token = limited.sign("cam-minkang", "minkang", "terminal")
    live = await publish(http, limited.url, token, room, [SyntheticVideo("vp8", 160, 120)])
    try:
        async with await post_offer(http, limited, token, room, await offer_that_never_connects()) as r:
            assert r.status == 201
            dead = r.headers["Location"].rsplit("/", 1)[-1]
        added = await watcher.wait_for("stream-added", 2)
        assert added["stream"]["id"] == dead
        dead_participant = added["stream"]["participant_id"]

        removed = await watcher.wait_for("stream-removed", 1, timeout=CONNECT_SECONDS + 8)
        assert removed["stream_id"] == dead
        left = await watcher.wait_for("participant-left", 1, timeout=5)
        assert left["participant_id"] == dead_participant
        async with http.get(f"{limited.url}/api/rooms/{room}", headers=auth(token)) as r:
            detail = await r.json()
        # The publisher that did connect outlives the timeout.
        assert [s["id"] for s in detail["streams"]] == [live.resource_id]
        assert dead_participant not in {p["id"] for p in detail["participants"]}
    finally:
        await live.close()
        await watcher.close()


async def open_room(http: aiohttp.ClientSession, hub: HubProcess, token: str, site: str) -> aiohttp.ClientResponse:
    body = {"site_id": site, "kind": "mediation", "title": "纠纷调解"}
    return await http.post(f"{hub.url}/api/rooms", json=body, headers=auth(token))


async def test_an_empty_opened_room_expires(limited: HubProcess, http: aiohttp.ClientSession) -> None:
    token = limited.sign("med-xiazhai", "xiazhai", "mediator")
    lobby = await EventSocket.open(http, limited, token)
    async with await open_room(http, limited, token, "xiazhai") as r:
        room = await r.json()
    # Occupied, it stays past the grace period.
    inside = await joined(http, limited, token, room["id"])
    await asyncio.sleep(EMPTY_ROOM_SECONDS * 2)
    async with http.get(f"{limited.url}/api/rooms/{room['id']}", headers=auth(token)) as r:
        assert r.status == 200
    await inside.close()
    closed = await lobby.wait_for("room-closed", timeout=EMPTY_ROOM_SECONDS * 4)
    assert closed["room_id"] == room["id"] and "empty" in closed["reason"]
    async with http.get(f"{limited.url}/api/rooms/{room['id']}", headers=auth(token)) as r:
        assert r.status == 404
    async with http.get(f"{limited.url}/api/rooms/site-xiazhai", headers=auth(token)) as r:
        assert r.status == 200  # standing rooms never expire
    await lobby.close()


async def test_rooms_per_site(limited: HubProcess, http: aiohttp.ClientSession) -> None:
    token = limited.sign("med-xinhua", "xinhua", "mediator")
    for _ in range(3):
        async with await open_room(http, limited, token, "xinhua") as r:
            assert r.status == 201
    async with await open_room(http, limited, token, "xinhua") as r:
        assert r.status == 429 and r.content_type == PROBLEM
        retry_after = int(r.headers["Retry-After"])
    assert 1 <= retry_after <= EMPTY_ROOM_SECONDS
    # A site at its limit can still call for help: the call's room is opened.
    caller = limited.sign("term-xinhua", "xinhua", "mediator")
    async with http.post(f"{limited.url}/api/calls", json={}, headers=auth(caller)) as r:
        assert r.status == 201, await r.text()
        call = await r.json()
    answerer = limited.sign("op-golmud-call", "golmud", "operator")
    async with http.post(f"{limited.url}/api/calls/{call['id']}/answer", headers=auth(answerer)) as r:
        assert r.status == 200, await r.text()
        assert (await r.json())["room"]["site_id"] == "xinhua"
    # The empty rooms close within the grace period and its check (a quarter of it).
    await asyncio.sleep(EMPTY_ROOM_SECONDS * 1.25 + 1)
    async with await open_room(http, limited, token, "xinhua") as r:
        assert r.status == 201, await r.text()


async def test_who_may_close_a_room(limited: HubProcess, http: aiohttp.ClientSession) -> None:
    opener = limited.sign("med-rianxiuma-close", "rianxiuma", "mediator")
    async with await open_room(http, limited, opener, "rianxiuma") as r:
        room = await r.json()
    inside = await joined(http, limited, opener, room["id"])
    stream = await publish(http, limited.url, opener, room["id"], [SyntheticVideo("vp8", 160, 120)])
    try:
        url = f"{limited.url}/api/rooms/{room['id']}"
        outsiders = [
            limited.sign("op-golmud", "golmud", "operator"),  # another prefecture's operator
            limited.sign("med-guomaying", "guomaying", "mediator"),  # above it, but neither opener nor operator
        ]
        for outsider in outsiders:
            async with http.delete(url, headers=auth(outsider)) as r:
                assert r.status == 403 and r.content_type == PROBLEM
        async with http.get(url, headers=auth(opener)) as r:
            assert r.status == 200 and len((await r.json())["streams"]) == 1

        async with http.delete(url, headers=auth(limited.sign("op-guinan", "guinan", "operator"))) as r:
            assert r.status == 200
        assert (await inside.wait_for("room-closed"))["reason"] == "closed by op-guinan"
        assert {"stream-removed", "participant-left"} <= {m["type"] for m in inside.messages}
        async with http.get(url, headers=auth(opener)) as r:
            assert r.status == 404
        async with http.get(f"{limited.url}/api/streams/{stream.resource_id}", headers=auth(opener)) as r:
            assert r.status == 404
        async with http.delete(url, headers=auth(opener)) as r:
            assert r.status == 404

        # Its opener may close it too; a standing room no one may.
        async with await open_room(http, limited, opener, "rianxiuma") as r:
            second = await r.json()
        async with http.delete(f"{limited.url}/api/rooms/{second['id']}", headers=auth(opener)) as r:
            assert r.status == 200
        admin = limited.sign("admin", "qinghai", "admin")
        async with http.delete(f"{limited.url}/api/rooms/site-rianxiuma", headers=auth(admin)) as r:
            assert r.status == 400 and r.content_type == PROBLEM
    finally:
        await stream.pc.close()
        await inside.close()


async def test_an_event_that_cannot_be_sent_does_not_stop_the_socket(
    tmp_path: Path, redis_url: str, http: aiohttp.ClientSession
) -> None:
    """An event from another process holding a lone surrogate (valid JSON,
    not UTF-8) used to kill the socket's forwarder silently."""
    hub = start_hub(tmp_path, "--redis", redis_url, env={"HUB_SNAPSHOT_SECONDS": "0"})
    client = aioredis.from_url(redis_url)
    try:
        room = "site-hedong"
        token = hub.sign("med-hedong", "hedong", "mediator")
        listener = await joined(http, hub, token, room)
        speaker = await joined(http, hub, token, room)
        # Valid JSON text (the surrogate written as the escape \ud800); parsed, a str UTF-8 cannot encode.
        bad = json.dumps({"type": "chat", "room_id": room, "participant_id": "p-x", "name": "x", "text": "\ud800"})
        await client.publish("hub:events", bad)
        await speaker.ws.send_json({"type": "chat", "room": room, "text": "还在吗"})
        chat = await listener.wait_for("chat")
        assert chat["text"] == "还在吗" and not listener.ws.closed
        await wait_until(lambda: "cannot send a 'chat' message" in hub.log.read_text(), 5)
        await listener.close()
        await speaker.close()
    finally:
        await client.aclose()
        hub.stop()


async def test_a_listener_pays_only_for_the_events_it_accepts() -> None:
    """The bus half of per-socket queues: another room's flood does not count
    towards a filtered listener's bound, and one that does not read is dropped."""
    state = MemoryLiveState("node-test")
    mine = state.listen(lambda event: event.get("room_id") == "site-mine", bound=10)
    everything = state.listen(bound=10)
    for i in range(1000):  # emit does not yield: nobody reads meanwhile
        await state.emit({"type": "chat", "room_id": "site-other", "text": str(i)})
    await state.emit({"type": "chat", "room_id": "site-mine", "text": "for me"})
    assert await mine.get() == {"type": "chat", "room_id": "site-mine", "text": "for me"}
    assert await everything.get() is None  # dropped after 10 unread events
    for _ in range(11):
        await state.emit({"type": "chat", "room_id": "site-mine", "text": "unread"})
    assert mine.qsize() == 1 and await mine.get() is None


class SlowToAnnounce(MemoryLiveState):
    """The embedded live state, holding each stream's announcement until let
    go: the moment (a Redis round trip in a cluster) when a stream is hosted
    but not yet announced."""

    def __init__(self) -> None:
        super().__init__("test")
        self.holding = asyncio.Event()
        self.go = asyncio.Event()

    async def add_stream(self, stream: Stream) -> None:
        self.holding.set()
        await self.go.wait()
        await super().add_stream(stream)


async def test_a_stream_being_announced_counts_once_against_the_quota() -> None:
    state = SlowToAnnounce()
    rooms = Rooms(
        load_sites_file(DEMO_SITES),
        state,
        Router(None, 1 << 20, 0.5, [], 10.0),
        "test",
        "http://127.0.0.1",
        Limits(2, 50, 64, 1000, 20, 600.0, 10.0),
    )
    claims = Claims("li", "xining", "operator")
    publishers = [RTCPeerConnection() for _ in range(3)]
    try:
        offers = []
        for pc in publishers:
            pc.addTrack(SyntheticVideo())
            await pc.setLocalDescription(await pc.createOffer())
            offers.append(pc.localDescription.sdp)
        first = asyncio.ensure_future(rooms.publish(claims, "site-xining", offers[0]))
        await asyncio.wait_for(state.holding.wait(), 10)
        # The first is hosted and not yet announced: one of li's two sessions, not two.
        second = asyncio.ensure_future(rooms.publish(claims, "site-xining", offers[1]))
        await asyncio.sleep(0.5)
        state.go.set()
        streams = await asyncio.wait_for(asyncio.gather(first, second), 10)
        assert len({stream["id"] for stream, _ in streams}) == 2
        with pytest.raises(QuotaExceeded, match="li has 2 publishing"):
            await rooms.publish(claims, "site-xining", offers[2])
    finally:
        for pc in publishers:
            await pc.close()
        await rooms._router.close()
