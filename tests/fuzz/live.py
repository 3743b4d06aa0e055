"""Targets against a live hub process: the WHIP and WHEP doors, every JSON
body and query parameter, the event socket, and the media door (UDP).

Each input goes in through the same door a client uses. A 5xx (or a
socket closed without a reason) is a crash; an input the hub refused must
leave what it lists - rooms, participants, streams, cases, trainings, peer
connections - as it was (`StateChanged` otherwise).
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import time
from collections.abc import Awaitable
from typing import Any, TypeVar

import aiohttp
from hypothesis import given
from hypothesis import strategies as st

from client import bot
from hub.config import Settings

from ..conftest import HubProcess
from .core import StateChanged, target
from .parsers import mutated_documents, rtp_packets
from .sdp import mutated_offers
from .strategies import json_values, mutated_bytes

T = TypeVar("T")
ROOM = "site-rianxiuma"
#: What a door may answer a fuzzed request; anything 5xx is a crash.
SDP_STATUSES = {201, 400, 403, 404, 415, 422, 429}  # 429: a session quota
#: Seconds one input may take, end to end, before it counts as a hang.
STEP = 30


class LiveHub:
    """A hub process, an HTTP session and a publisher, driven from synchronous
    hypothesis properties through an event loop of its own."""

    def __init__(self, hub: HubProcess) -> None:
        self.hub = hub
        self.url = hub.url
        self.loop = asyncio.new_event_loop()
        self.admin = hub.sign("fuzz-admin", "qinghai", "admin")
        self.tokens = [
            self.admin,
            hub.sign("fuzz-mediator", "guomaying", "mediator"),
            hub.sign("fuzz-operator", "guinan", "operator"),
            hub.sign("fuzz-guest", "guomaying", "guest", room=ROOM),
            "not-a-token",
        ]
        self.http: aiohttp.ClientSession = self.run(self._session())
        self.publisher = self.run(self._publish())
        self.stream_id = self.publisher.resource_id
        self.case_id = self.run(self._open_case())
        self.bystander: PacedSocket | None = None

    async def _session(self) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=STEP))

    async def _publish(self) -> bot.Session:
        # A few frames a second: a live stream to view and a session whose ICE port takes datagrams.
        tracks = [bot.SyntheticVideo("vp8", 160, 120, 5), bot.SyntheticAudio()]
        return await bot.publish(self.http, self.url, self.tokens[1], ROOM, tracks)

    async def ensure_publisher(self) -> None:
        """A new publisher if an input ended the last one (on either side), then wait until it is connected."""
        async with self.http.get(f"{self.url}/api/streams/{self.stream_id}", headers=self.auth(self.admin)) as r:
            gone = r.status == 404
        if gone or self.publisher.pc.connectionState in ("failed", "closed"):
            await self.publisher.close()
            self.publisher = await self._publish()
            self.stream_id = self.publisher.resource_id
        deadline = time.monotonic() + STEP
        while self.publisher.pc.connectionState != "connected" and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    async def _open_case(self) -> str:
        body = {"title": "fuzz", "dispute_type": "land", "parties": [{"name": "甲"}]}
        async with self.http.post(f"{self.url}/api/cases", json=body, headers=self.auth(self.tokens[1])) as r:
            assert r.status == 201, await r.text()
            return str((await r.json())["id"])

    def run(self, coro: Awaitable[T]) -> T:
        return self.loop.run_until_complete(asyncio.wait_for(coro, STEP))

    def close(self) -> None:
        async def _close() -> None:
            if self.bystander is not None:
                await self.bystander.ws.close()
            await self.publisher.close()
            await self.http.close()

        self.run(_close())
        self.loop.close()

    @staticmethod
    def auth(token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    async def listing(self) -> dict[str, Any]:
        """What the hub lists, as an administrator of the whole tree sees it."""
        out: dict[str, Any] = {}
        for path in ("/api/rooms", f"/api/rooms/{ROOM}", "/api/cases", "/api/trainings?all=1", "/healthz"):
            async with self.http.get(self.url + path, headers=self.auth(self.admin)) as r:
                out[path] = (r.status, await r.json())
        # Values that move by themselves (a participant's last-seen time, the event loop's lag) are not state.
        for p in out[f"/api/rooms/{ROOM}"][1].get("participants", []):
            p.pop("seen_at", None)
        status, health = out["/healthz"]
        out["/healthz"] = (status, {k: v for k, v in health.items() if not k.startswith("loop_lag")})
        return out

    async def check_refused_changed_nothing(self, before: dict[str, Any], what: str) -> None:
        after = await self.listing()
        if after != before:
            changed = [k for k in before if before[k] != after.get(k)]
            raise StateChanged(f"{what} was refused but changed {changed}")

    def alive(self) -> None:
        async def _health() -> None:
            async with self.http.get(f"{self.url}/healthz") as r:
                assert r.status == 200, "the hub stopped answering"

        self.run(_health())
        assert self.hub.proc.poll() is None, "the hub process died"


# --- WHIP and WHEP -----------------------------------------------------------------------------

_CONTENT_TYPES = st.sampled_from(["application/sdp"] * 6 + ["application/json", "text/plain", ""])
_QUERY_TEXT = st.one_of(
    st.sampled_from(["camera", "screen", "", "../x", "0", "camera&kind=screen"]), st.text(max_size=12)
)


async def _offer(live: LiveHub, door: str, offer: str, content_type: str, token: int, query: dict[str, str]) -> None:
    before = await live.listing()
    url = f"{live.url}/whip/{ROOM}" if door == "whip" else f"{live.url}/whep/{live.stream_id}"
    headers = live.auth(live.tokens[token]) | ({"Content-Type": content_type} if content_type else {})
    async with live.http.post(url, data=offer.encode(), headers=headers, params=query, allow_redirects=False) as r:
        text = await r.text()
        if r.status == 401 and token == len(live.tokens) - 1:
            pass  # the bad token
        elif r.status not in SDP_STATUSES:
            raise AssertionError(f"{door.upper()} answered {r.status}: {text[:300]}")
        location = r.headers.get("Location")
    if r.status == 201:
        assert location and text.startswith("v=0"), text[:200]
        async with live.http.delete(live.url + location, headers=headers) as d:
            assert d.status == 200, await d.text()
    else:
        await live.check_refused_changed_nothing(before, f"{door.upper()} {r.status}")


@target(ci_examples=40, live=True)
@given(
    offer=mutated_offers("whip"),
    content_type=_CONTENT_TYPES,
    token=st.integers(0, 4),
    kind=_QUERY_TEXT,
    participant=st.none() | st.text(max_size=8),
)
def fuzz_live_whip(
    live: LiveHub, offer: str, content_type: str, token: int, kind: str, participant: str | None
) -> None:
    """WHIP offers (a real aiortc offer, mutated) with odd query parameters: 201 or a 4xx
    problem, and a refused one changes nothing."""
    query = {"kind": kind} | ({"participant": participant} if participant is not None else {})
    live.run(_offer(live, "whip", offer, content_type, token, query))


@target(ci_examples=40, live=True)
@given(offer=mutated_offers("whep"), content_type=_CONTENT_TYPES, token=st.integers(0, 4))
def fuzz_live_whep(live: LiveHub, offer: str, content_type: str, token: int) -> None:
    """WHEP offers for a live stream: 201 or a 4xx problem; a refused one adds no viewer."""
    live.run(_offer(live, "whep", offer, content_type, token, {}))


# --- JSON bodies and query parameters ----------------------------------------------------------

#: (method, path, valid bodies) for every route that reads a JSON body. POST
#: /api/cameras is left out: a body it accepts makes the hub pull the URL it names,
#: and a fuzzer must not send the hub to addresses off this machine.
_BODY_ROUTES: list[tuple[str, str, list[dict[str, object]]]] = [
    ("POST", "/api/rooms", [{"site_id": "guomaying", "kind": "mediation", "title": "t"}]),
    ("POST", f"/api/rooms/{ROOM}/invites", [{"ttl": 600}, {"name": "访客"}]),
    ("POST", f"/api/rooms/{ROOM}/recording", [{"on": False}]),
    ("PUT", "/api/console/layouts", [{"layouts": [{"name": "墙", "grid": 4, "panes": [{"site_id": "guinan"}]}]}]),
    ("POST", "/api/calls", [{"note": "求助"}]),
    ("POST", "/api/conferences", [{"title": "会", "sites": ["guomaying"]}]),
    ("POST", "/api/trainings", [{"title": "培训", "branch": "guinan"}]),
    ("POST", f"/api/trainings/{ROOM}/speakers", [{"participant_id": "p1"}]),
    ("POST", "/api/cases", [{"title": "纠纷", "dispute_type": "land", "parties": [{"name": "甲"}]}]),
    ("PATCH", "/api/cases/{case}", [{"status": "closed", "outcome": "ok"}, {"outcome": "x"}]),
    ("POST", "/api/cases/{case}/escalate", [{"note": "升级"}]),
]


def _route_bodies() -> st.SearchStrategy[tuple[str, str, bytes, str]]:
    def one(method: str, path: str, valid: list[dict[str, object]]) -> st.SearchStrategy[tuple[str, str, bytes, str]]:
        body = st.one_of(mutated_documents(valid).map(str.encode), st.binary(max_size=40))
        kind = st.sampled_from(["application/json"] * 5 + ["text/plain", "application/sdp"])
        return st.tuples(st.just(method), st.just(path), body, kind)

    return st.one_of(*(one(*route) for route in _BODY_ROUTES))


async def _body(live: LiveHub, method: str, path: str, body: bytes, content_type: str, token: int) -> None:
    before = await live.listing()
    url = live.url + path.replace("{case}", live.case_id)
    headers = live.auth(live.tokens[token]) | {"Content-Type": content_type}
    async with live.http.request(method, url, data=body, headers=headers, allow_redirects=False) as r:
        text = await r.text()
        assert r.status < 500, f"{method} {path} answered {r.status}: {text[:300]}"
    if r.status >= 400:
        assert r.headers.get("Content-Type", "").startswith("application/problem+json"), text[:200]
        await live.check_refused_changed_nothing(before, f"{method} {path} ({r.status})")


@target(ci_examples=120, live=True)
@given(request=_route_bodies(), token=st.integers(0, 4))
def fuzz_live_json_bodies(live: LiveHub, request: tuple[str, str, bytes, str], token: int) -> None:
    """Every JSON body route: mutated valid bodies and bytes get 2xx or a 4xx problem; a refused one changes nothing."""
    live.run(_body(live, *request, token))


def _query_routes(live: LiveHub) -> list[tuple[str, list[str]]]:
    """GET routes with query parameters, from the hub's own OpenAPI document."""

    async def fetch() -> dict[str, Any]:
        async with live.http.get(f"{live.url}/api/openapi.json") as r:
            return dict(await r.json())

    routes = []
    for path, ops in live.run(fetch())["paths"].items():
        op = ops.get("get")
        names = [p["name"] for p in (op or {}).get("parameters", []) if p.get("in") == "query"]
        if names and path != "/ws":
            routes.append((path, names))
    return routes


_PATH_VALUES = st.sampled_from(["{stream}", "{room}", "..", "%2e%2e", "..%2f..%2fetc%2fpasswd", "x"]) | st.text(
    "abc.-_/%0", max_size=10
)
_QUERY_VALUES = st.one_of(
    st.sampled_from(["", "mine", "1", "true", "csv", "guinan", "nowhere", "2026-12-01", "1e999", "-1", "nan"]),
    st.integers(-(2**63), 2**63).map(str),
    st.text(max_size=16),
)


@target(ci_examples=120, live=True)
@given(pick=st.integers(0, 1000), values=st.lists(_QUERY_VALUES, min_size=5, max_size=5), path=_PATH_VALUES,
       token=st.integers(0, 4))  # fmt: skip
def fuzz_live_query(live: LiveHub, pick: int, values: list[str], path: str, token: int) -> None:
    """Every query parameter of every GET route, and path segments that climb: never a 5xx,
    never a file from outside the data directory, nothing changed."""
    routes = getattr(live, "query_routes", None) or _query_routes(live)
    live.query_routes = routes  # type: ignore[attr-defined]
    route, names = routes[pick % len(routes)]
    segment = path.replace("{stream}", live.stream_id).replace("{room}", ROOM)
    url = live.url + "/".join(segment if part.startswith("{") else part for part in route.split("/"))
    query = dict(zip(names, values, strict=False))

    async def go() -> None:
        before = await live.listing()
        async with live.http.get(url, params=query, headers=live.auth(live.tokens[token])) as r:
            body = await r.read()
            assert r.status < 500, f"GET {route} {query} answered {r.status}: {body[:300]!r}"
            assert b"root:x:0:0" not in body, f"GET {url} served a file from outside the data directory"
        await live.check_refused_changed_nothing(before, f"GET {route}")

    live.run(go())


# --- the event socket --------------------------------------------------------------------------

_WS_VALID = [
    {"type": "join", "room": ROOM, "name": "模糊"},
    {"type": "join", "room": ROOM, "watch": True},
    {"type": "leave", "room": ROOM},
    {"type": "ping"},
    {"type": "state", "room": ROOM, "audio": True, "video": False},
    {"type": "chat", "room": ROOM, "text": "你好"},
    {"type": "hand", "room": ROOM, "raised": True},
    {"type": "invite-site", "room": ROOM, "site": "guinan"},
    {"type": "record", "room": ROOM, "on": False},
    {"type": "monitor", "on": True},
]


async def _socket(live: LiveHub, token: str) -> aiohttp.ClientWebSocketResponse:
    ws = await live.http.ws_connect(f"{live.url}/ws?token={token}")
    hello = await ws.receive_json(timeout=STEP)
    assert hello["type"] == "hello", hello
    return ws


async def round_trip(ws: aiohttp.ClientWebSocketResponse) -> list[dict[str, Any]] | None:
    """Messages up to the pong that answers a ping; None if the socket was closed instead."""
    await ws.send_json({"type": "ping"})
    replies = []
    while True:
        msg = await ws.receive(timeout=STEP)
        if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED):
            return None
        data = json.loads(msg.data)
        if data["type"] == "pong":
            return replies
        replies.append(data)


class PacedSocket:
    """A socket that round-trips again and again (the bystander: once per input) no faster
    than the hub's per-socket message rate. Inputs come faster than that while hypothesis
    shrinks; a ping over the rate is refused as rate-limited, no pong ever answers it, and
    the round trip waited its 30 s as if the hub had hung."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, messages_per_second: float) -> None:
        self.ws = ws
        self._gap = 1 / messages_per_second
        self._next = 0.0

    async def round_trip(self) -> list[dict[str, Any]] | None:
        await asyncio.sleep(self._next - time.monotonic())
        self._next = time.monotonic() + self._gap
        return await round_trip(self.ws)


async def _ws_message(live: LiveHub, raw: str | bytes, token: int) -> None:
    if live.bystander is None:
        # The hub process was started with this environment, so it has these settings.
        live.bystander = PacedSocket(await _socket(live, live.tokens[2]), Settings().ws_messages_per_second)
        await live.bystander.ws.send_json({"type": "join", "room": ROOM, "watch": True})
    before = await live.listing()
    ws = await _socket(live, live.tokens[token % 4])
    try:
        if isinstance(raw, bytes):
            await ws.send_bytes(raw)
        else:
            await ws.send_str(raw)
        try:
            replies = await round_trip(ws)
        except ConnectionResetError:
            replies = None
        if replies is None:  # closed: it must say why, and not as a server error
            assert ws.close_code not in (None, 1011), f"closed with {ws.close_code} after {raw!r:.200}"
        elif replies and {r["type"] for r in replies} == {"error"}:
            await ws.close()
            await live.check_refused_changed_nothing(before, f"event message {raw!r:.100}")
    finally:
        await ws.close()
    # Another client's socket is unaffected.
    assert await live.bystander.round_trip() is not None, "the bystander's socket was closed"


_WS_INPUTS = st.one_of(
    mutated_documents(_WS_VALID),
    json_values().map(json.dumps),
    st.binary(max_size=30),
    st.integers(17_000, 40_000).map(lambda n: json.dumps({"type": "chat", "room": ROOM, "text": "x" * n})),
)


@target(ci_examples=60, live=True)
@given(raw=_WS_INPUTS, token=st.integers(0, 3))
def fuzz_live_events(live: LiveHub, raw: str | bytes, token: int) -> None:
    """Random and mutated event-socket messages: an error reply or a close with a reason;
    other sockets unaffected, the hub alive, and a refused message changes nothing."""
    live.run(_ws_message(live, raw, token))
    live.alive()


# --- the media door: UDP datagrams at a live session's ICE port --------------------------------


def _hub_ice_ports(live: LiveHub) -> list[int]:
    """The hub's candidates in the publisher's answer (all on loopback)."""
    ports = []
    for line in live.publisher.pc.remoteDescription.sdp.splitlines():
        if line.startswith("a=candidate:"):
            fields = line.split()
            assert fields[4].startswith("127."), line  # nothing off this machine
            ports.append(int(fields[5]))
    return sorted(set(ports))


def _stun(draw: st.DrawFn) -> bytes:
    message_type = draw(st.sampled_from([0x0001, 0x0101, 0x0111, 0x0011, draw(st.integers(0, 0x3FFF))]))
    body = draw(st.binary(max_size=40))
    return struct.pack("!HHI", message_type, len(body), 0x2112A442) + draw(st.binary(min_size=12, max_size=12)) + body


def _dtls(draw: st.DrawFn) -> bytes:
    content = draw(st.sampled_from([20, 21, 22, 23, draw(st.integers(20, 63))]))
    body = draw(st.binary(max_size=60))
    return bytes([content, 0xFE, 0xFD]) + draw(st.binary(min_size=8, max_size=8)) + len(body).to_bytes(2, "big") + body


@st.composite
def datagrams(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["empty", "random", "stun", "dtls", "rtp"]))
    if kind == "empty":
        return b""
    if kind == "stun":
        return _stun(draw)
    if kind == "dtls":
        return _dtls(draw)
    if kind == "rtp":
        return draw(mutated_bytes(rtp_packets(), max_size=200))
    return draw(st.binary(max_size=200))


async def _datagrams(live: LiveHub, batch: list[bytes]) -> None:
    await live.ensure_publisher()  # each input meets a live session, so a failing one shrinks true
    ports = _hub_ice_ports(live)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for data in batch:
            for port in ports:
                sock.sendto(data, ("127.0.0.1", port))
    await asyncio.sleep(0.2)  # the hub reads them
    assert live.publisher.pc.connectionState == "connected", "the publisher's session ended"
    async with live.http.get(f"{live.url}/api/streams/{live.stream_id}", headers=live.auth(live.admin)) as r:
        assert r.status == 200, f"the stream is gone: {r.status}"


@target(ci_examples=20, live=True)
@given(batch=st.lists(datagrams(), min_size=1, max_size=8))
def fuzz_live_media_door(live: LiveHub, batch: list[bytes]) -> None:
    """Empty, random, STUN-, DTLS- and RTP-looking datagrams at a live session's ICE
    port from another address: the session survives."""
    live.run(_datagrams(live, batch))
