"""The room's doors: mute state, chat, raised hands, site invitations over the
event WebSocket, and guest invite links over REST."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import pytest

from .conftest import HubProcess

PROBLEM = "application/problem+json"


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class Socket:
    """An event socket with a bounded wait for the next message of a type."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws

    async def send(self, message: dict) -> None:
        await self.ws.send_str(json.dumps(message))

    async def next(self, *types: str, timeout: float = 5) -> dict:
        async with asyncio.timeout(timeout):
            while True:
                message = json.loads(await self.ws.receive_str())
                if message["type"] in types:
                    return message

    async def request(self, message: dict) -> dict:
        """Send and return the reply (ack, joined, left or error); events in between are skipped."""
        await self.send(message)
        return await self.next("ack", "joined", "left", "error")

    async def nothing_of(self, type_: str, seconds: float = 0.7) -> bool:
        try:
            await self.next(type_, timeout=seconds)
        except TimeoutError:
            return True
        return False


@asynccontextmanager
async def socket(http: aiohttp.ClientSession, hub: HubProcess, token: str) -> AsyncIterator[Socket]:
    async with http.ws_connect(f"{hub.url}/ws", headers=auth(token)) as ws:
        s = Socket(ws)
        await s.next("hello")
        yield s


@pytest.fixture(scope="module")
def tokens(hub: HubProcess) -> dict[str, str]:
    return {
        "village": hub.token("med-rianxiuma", "rianxiuma", "mediator"),
        "township": hub.token("med-guomaying", "guomaying", "mediator"),
        "county": hub.token("op-guinan", "guinan", "operator"),
        "beside": hub.token("med-shangzhai", "shangzhai", "mediator"),
        "terminal": hub.token("cam-rianxiuma", "rianxiuma", "terminal"),
        "guest": hub.token("party", "rianxiuma", "guest", room="site-rianxiuma"),
    }


ROOM = "site-rianxiuma"


async def test_state_hand_and_chat_reach_the_room(hub: HubProcess, http: aiohttp.ClientSession, tokens):
    async with socket(http, hub, tokens["village"]) as a, socket(http, hub, tokens["township"]) as b:
        me = (await a.request({"type": "join", "room": ROOM, "name": "村调解员"}))["participant"]
        assert (await b.request({"type": "join", "room": ROOM}))["type"] == "joined"

        assert await a.request({"type": "state", "room": ROOM, "audio": False, "video": True}) == {
            "type": "ack",
            "of": "state",
            "room_id": ROOM,
        }
        updated = await b.next("participant-updated")
        assert updated["participant"] | {"audio": False, "video": True, "id": me["id"]} == updated["participant"]

        await a.request({"type": "hand", "room": ROOM, "raised": True})
        updated = await b.next("participant-updated")
        assert updated["participant"]["hand"] is True and updated["participant"]["audio"] is False

        # The live record holds the change: a late joiner sees it in the roster.
        async with http.get(f"{hub.url}/api/rooms/{ROOM}", headers=auth(tokens["county"])) as r:
            record = next(p for p in (await r.json())["participants"] if p["id"] == me["id"])
        assert (record["audio"], record["video"], record["hand"]) == (False, True, True)

        before = time.time()
        await a.request({"type": "chat", "room": ROOM, "text": "请双方陈述"})
        chat = await b.next("chat")
        assert {k: chat[k] for k in ("room_id", "participant_id", "name", "text")} == {
            "room_id": ROOM,
            "participant_id": me["id"],
            "name": "村调解员",
            "text": "请双方陈述",
        }
        assert before - 1 <= chat["at"] <= time.time() + 1
        assert (await a.next("chat"))["text"] == "请双方陈述"  # the sender sees its own message too


@pytest.mark.parametrize(
    ("message", "code"),
    [
        ({"type": "chat", "room": ROOM, "text": ""}, "bad-message"),
        ({"type": "chat", "room": ROOM, "text": "x" * 1001}, "bad-message"),
        ({"type": "chat", "room": ROOM, "text": "hi", "name": "someone else"}, "bad-message"),
        ({"type": "state", "room": ROOM, "audio": "no", "video": True}, "bad-message"),
        ({"type": "state", "room": ROOM, "audio": False}, "bad-message"),
        ({"type": "hand", "room": ROOM}, "bad-message"),
        ({"type": "invite-site", "room": ROOM, "site": ""}, "bad-message"),
        ({"type": "chat", "room": "site-shangzhai", "text": "hi"}, "not-joined"),
        ({"type": "hand", "room": "site-shangzhai", "raised": True}, "not-joined"),
    ],
)
async def test_bad_room_messages_change_nothing(hub: HubProcess, http: aiohttp.ClientSession, tokens, message, code):
    async with socket(http, hub, tokens["village"]) as a, socket(http, hub, tokens["county"]) as watcher:
        await a.request({"type": "join", "room": ROOM})
        await watcher.request({"type": "join", "room": ROOM, "watch": True})
        reply = await a.request(message)
        assert reply["type"] == "error" and reply["code"] == code, reply
        assert await watcher.nothing_of("participant-updated") and await watcher.nothing_of("chat", 0.1)


async def test_room_messages_need_a_participant(hub: HubProcess, http: aiohttp.ClientSession, tokens):
    async with socket(http, hub, tokens["county"]) as s:
        # Before joining, and when only watching, a socket may not speak in the room.
        assert (await s.request({"type": "chat", "room": ROOM, "text": "hi"}))["code"] == "not-joined"
        await s.request({"type": "join", "room": ROOM, "watch": True})
        assert (await s.request({"type": "state", "room": ROOM, "audio": True, "video": True}))["code"] == "not-joined"
        await s.request({"type": "leave", "room": ROOM})
        assert (await s.request({"type": "hand", "room": ROOM, "raised": True}))["code"] == "not-joined"


async def test_invitation_goes_only_to_the_invited_site(hub: HubProcess, http: aiohttp.ClientSession, tokens):
    async with (
        socket(http, hub, tokens["village"]) as inviter,
        socket(http, hub, tokens["township"]) as township,
        socket(http, hub, tokens["county"]) as county,
        socket(http, hub, tokens["beside"]) as beside,
        socket(http, hub, tokens["guest"]) as guest,
    ):
        await inviter.request({"type": "join", "room": ROOM, "name": "村调解员"})
        await guest.request({"type": "join", "room": ROOM, "name": "当事人"})
        reply = await inviter.request({"type": "invite-site", "room": ROOM, "site": "guomaying"})
        assert reply == {"type": "ack", "of": "invite-site", "room_id": ROOM}

        invitation = await township.next("invitation")  # joined to nothing, told anyway
        assert invitation["room_id"] == ROOM and invitation["site_id"] == "guomaying"
        assert invitation["room"]["site_id"] == "rianxiuma"
        assert invitation["from"] == {"user": "med-rianxiuma", "name": "村调解员", "site_id": "rianxiuma"}
        # Not the county above it, the village beside, nor the room's own members.
        for other in (county, beside, guest, inviter):
            assert await other.nothing_of("invitation", 0.3)

        # The invited user may enter: the room lies in the township's jurisdiction.
        assert (await township.request({"type": "join", "room": ROOM}))["type"] == "joined"


@pytest.mark.parametrize(
    ("who", "site", "code"),
    [
        ("village", "rianxiuma", "bad-message"),  # the room's own site is not above it
        ("village", "shangzhai", "bad-message"),  # a site beside
        ("village", "nowhere", "bad-message"),
        ("terminal", "guomaying", "forbidden"),
        ("guest", "guomaying", "forbidden"),
    ],
)
async def test_invite_site_refusals(hub: HubProcess, http: aiohttp.ClientSession, tokens, who, site, code):
    async with socket(http, hub, tokens[who]) as s, socket(http, hub, tokens["township"]) as township:
        await s.request({"type": "join", "room": ROOM})
        reply = await s.request({"type": "invite-site", "room": ROOM, "site": site})
        assert reply["type"] == "error" and reply["code"] == code, reply
        assert await township.nothing_of("invitation", 0.3)


async def test_invite_links(hub: HubProcess, http: aiohttp.ClientSession, tokens):
    url = f"{hub.url}/api/rooms/{ROOM}/invites"
    async with http.post(url, json={"ttl": 1800}, headers=auth(tokens["village"])) as r:
        assert r.status == 201
        invite = await r.json()
    assert invite["url"] == f"/rooms/{ROOM}?token={invite['token']}"
    assert abs(invite["expires_at"] - (time.time() + 1800)) < 5

    guest = invite["token"]
    async with http.get(f"{hub.url}/api/me", headers=auth(guest)) as r:
        me = await r.json()
    assert (me["role"], me["room"], me["site"]["id"]) == ("guest", ROOM, "rianxiuma")
    async with http.get(f"{hub.url}/api/rooms/{ROOM}", headers=auth(guest)) as r:
        assert r.status == 200
    # The link opens nothing else: no other room, no site tree, no further links.
    async with http.get(f"{hub.url}/api/rooms/site-shangzhai", headers=auth(guest)) as r:
        assert r.status == 403 and r.content_type == PROBLEM
    async with http.get(f"{hub.url}/api/sites/rianxiuma", headers=auth(guest)) as r:
        assert r.status == 403
    async with http.post(url, json={"ttl": 1800}, headers=auth(guest)) as r:
        assert r.status == 403 and "guests" in (await r.json())["detail"]
    async with socket(http, hub, guest) as s:
        assert (await s.request({"type": "join", "room": "site-shangzhai"}))["code"] == "forbidden"

    # The page the link names is served.
    async with http.get(f"{hub.url}{invite['url']}") as r:
        assert r.status == 200 and "room.js" in await r.text()


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ({}, "ttl: Field required"),
        ({"ttl": 60}, "ttl: Input should be 1800, 7200 or 86400"),
        ({"ttl": "1800"}, "ttl: Input should be 1800, 7200 or 86400"),
        ({"ttl": 1800.0}, "ttl: Input should be 1800, 7200 or 86400"),
        ({"ttl": True}, "ttl: Input should be 1800, 7200 or 86400"),
        ({"ttl": 1800, "room": "x"}, "room: Extra inputs are not permitted"),
        ([1800], "the body must be a JSON object"),
        ("x", "the body must be a JSON object"),
    ],
)
async def test_invite_link_bad_input(hub: HubProcess, http: aiohttp.ClientSession, tokens, body, detail):
    async with http.post(f"{hub.url}/api/rooms/{ROOM}/invites", json=body, headers=auth(tokens["village"])) as r:
        assert r.status == 400 and r.content_type == PROBLEM
        assert detail in (await r.json())["detail"]


async def test_invite_link_refusals(hub: HubProcess, http: aiohttp.ClientSession, tokens):
    async def post(room: str, headers: dict[str, str]) -> aiohttp.ClientResponse:
        async with http.post(f"{hub.url}/api/rooms/{room}/invites", json={"ttl": 7200}, headers=headers) as r:
            await r.read()
            return r

    assert (await post("site-shangzhai", auth(tokens["village"]))).status == 403  # outside jurisdiction
    assert (await post("site-rianxiuma", auth(tokens["beside"]))).status == 403
    assert (await post("room-nothere", auth(tokens["village"]))).status == 404
    assert (await post("site-rianxiuma", {})).status == 401
    assert (await post("site-rianxiuma", auth("not-a-token"))).status == 401


async def test_room_sites(hub: HubProcess, http: aiohttp.ClientSession, tokens):
    async with http.get(f"{hub.url}/api/rooms/{ROOM}/sites", headers=auth(tokens["guest"])) as r:
        ids = [s["id"] for s in await r.json()]
    assert ids == ["rianxiuma", "guomaying", "guinan", "hainan", "qinghai"]
    async with http.get(f"{hub.url}/api/rooms/site-shangzhai/sites", headers=auth(tokens["guest"])) as r:
        assert r.status == 403
