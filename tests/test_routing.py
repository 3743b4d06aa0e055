"""Events routed by interest (hub/core/bus.py): each socket receives exactly
the events meant for it, as it joins, leaves and starts monitoring; an event
is offered only to its candidates, whatever the number of sockets; a console
that lost its socket knows from the sequence numbers that it missed events;
only a client that does not read is closed as too slow, and told so."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as aioredis

from hub.core.bus import EventIndex
from hub.core.livestate import MemoryLiveState
from hub.core.sites import Site, SiteTree
from hub.core.tokens import Claims

from .conftest import EventSocket, HubProcess, start_hub, wait_until

#: Events every socket may get whatever it does; the test ignores them.
CHATTER = {"hello", "pong", "ack", "joined", "left", "error"}


def seen(sock: EventSocket, since: int) -> list[tuple[str, str]]:
    """The events a socket received after message `since`: (type, what it names)."""
    out = []
    for m in sock.messages[since:]:
        if m["type"] in CHATTER:
            continue
        what = m.get("site_id") or (m.get("participant") or {}).get("user") or m.get("participant_id") or ""
        out.append((m["type"], str(m.get("room_id", "")) + "/" + str(what)))
    return out


async def settle(*socks: EventSocket) -> list[int]:
    for sock in socks:
        await sock.settle()
    return [len(s.messages) for s in socks]


@pytest.fixture
def quiet_hub(tmp_path: Path) -> Iterator[HubProcess]:
    """A hub of its own: on the shared one, a room another test left empty is
    closed 600 s later (`room-closed`), whichever test's sockets are open then."""
    process = start_hub(tmp_path / "hub")
    yield process
    process.stop()


async def test_each_socket_gets_exactly_its_events(quiet_hub: HubProcess, http: aiohttp.ClientSession) -> None:
    hub = quiet_hub
    room = "site-rianxiuma"
    village = await EventSocket.open(http, hub, hub.token("rt-village", "rianxiuma", "mediator"))
    county = await EventSocket.open(http, hub, hub.token("rt-county", "guinan", "operator"))
    elsewhere = await EventSocket.open(http, hub, hub.token("rt-elsewhere", "chengdong", "operator"))
    neighbour = await EventSocket.open(http, hub, hub.token("rt-neighbour", "minkang", "mediator"))
    guest = await EventSocket.open(http, hub, hub.token("rt-guest", "rianxiuma", "guest", room=room))
    socks = (village, county, elsewhere, neighbour, guest)
    try:
        for sock in (village, guest):
            await sock.ws.send_json({"type": "join", "room": room})
            await sock.wait_for("joined")
        for sock in (county, elsewhere):
            await sock.ws.send_json({"type": "monitor", "on": False})  # not monitoring yet
        marks = await settle(*socks)

        # Someone joins the room and chats: the room's sockets only.
        speaker = await EventSocket.open(http, hub, hub.token("rt-speaker", "rianxiuma", "mediator"))
        await speaker.ws.send_json({"type": "join", "room": room})
        joined = await speaker.wait_for("joined")
        await speaker.ws.send_json({"type": "chat", "room": room, "text": "早上好"})
        await speaker.wait_for("chat")
        await settle(*socks)
        me = joined["participant"]["id"]
        assert seen(village, marks[0]) == [("participant-joined", f"{room}/rt-speaker"), ("chat", f"{room}/{me}")]
        assert seen(guest, marks[4]) == seen(village, marks[0])
        for sock, mark in zip((county, elsewhere, neighbour), marks[1:4], strict=True):
            assert seen(sock, mark) == []  # the speaker's presence goes to monitors only

        # The county starts monitoring: room activity below it, and presence, reach it; not the other county.
        for sock in (county, elsewhere):
            await sock.ws.send_json({"type": "monitor", "on": True})
            await sock.wait_for("ack")
        marks = await settle(*socks)
        await speaker.ws.send_json({"type": "leave", "room": room})
        await speaker.wait_for("left")
        await speaker.close()
        await settle(*socks)
        left = (("participant-left", f"{room}/{me}"),)
        assert seen(county, marks[1]) == [*left, ("presence", "/rianxiuma")]
        assert seen(village, marks[0]) == list(left) and seen(guest, marks[4]) == list(left)
        assert seen(elsewhere, marks[2]) == [] and seen(neighbour, marks[3]) == []
        assert all(m["seq"] > 0 for m in county.messages[marks[1] :] if m["type"] not in CHATTER)

        # The village leaves the room: the room's chat no longer reaches it; the guest's still does.
        await village.ws.send_json({"type": "leave", "room": room})
        await village.wait_for("left")
        marks = after = await settle(*socks)
        other = await EventSocket.open(http, hub, hub.token("rt-other", "rianxiuma", "mediator"))
        await other.ws.send_json({"type": "join", "room": room})
        await other.wait_for("joined")
        await other.ws.send_json({"type": "chat", "room": room, "text": "还在吗"})
        await other.wait_for("chat")
        await settle(*socks)
        assert seen(village, after[0]) == []
        assert [t for t, _ in seen(guest, after[4])] == ["participant-joined", "chat"]
        assert [t for t, _ in seen(county, after[1])] == ["presence", "participant-joined"]
        assert seen(neighbour, marks[3]) == [] and seen(elsewhere, marks[2]) == []
        await other.close()
    finally:
        for sock in socks:
            await sock.close()


def storm_tree() -> SiteTree:
    """1 province, 8 prefectures, 45 counties, 414 townships, 4,486 villages."""
    sites = [Site("prov", "prov", "province", None)]
    parents = ["prov"]
    for level, count in (("prefecture", 8), ("county", 45), ("township", 414), ("village", 4486)):
        ids = [f"{level[0]}{i}" for i in range(count)]
        sites += [Site(s, s, level, parents[i * len(parents) // count]) for i, s in enumerate(ids)]
        parents = ids
    return SiteTree(sites)


async def test_an_event_costs_its_recipients_not_the_sockets() -> None:
    """5,000 village sockets and one console: a village's presence is offered
    to the console and to nobody else; a room's chat only to its room."""
    tree = storm_tree()
    state = MemoryLiveState("node-test")
    index = EventIndex(state, tree)
    villages = [s.id for s in tree if s.level == "village"]
    terminals = [index.add(Claims(f"t{i}", villages[i % len(villages)], "terminal"), 1000) for i in range(5000)]
    v = villages[7]
    county = tree.get(tree.get(v).parent).parent  # type: ignore[union-attr]
    console = index.add(Claims("op", county, "operator"), 1000)
    index.monitor(console, True)
    index.join(terminals[7], f"site-{v}")

    await state.emit({"type": "presence", "site_id": v, "online": 2, "to": {"covering": v}})
    await state.emit({"type": "chat", "room_id": f"site-{v}", "text": "x"})
    await state.emit({"type": "participant-joined", "room_id": f"site-{v}", "participant": {"id": "p"}})
    busy = [t for t in terminals if t.pending()]
    assert busy == [terminals[7]] and terminals[7].pending() == 2  # chat and participant-joined
    assert console.pending() == 2  # presence and participant-joined
    other = tree.get(villages[-1]).id  # type: ignore[union-attr]
    await state.emit({"type": "presence", "site_id": other, "online": 1, "to": {"covering": other}})
    assert console.pending() == 2 and [t for t in terminals if t.pending()] == [terminals[7]]
    index.close()
    assert (await console.get()) is None and console.dropped == "hub stopping"


async def test_a_console_knows_it_missed_events(hub: HubProcess, http: aiohttp.ClientSession) -> None:
    """The sequence number: a console whose socket dropped sees, on its new
    socket's monitor ack, that events went by; the status it reloads says
    which sequence it reflects, and the events after it carry higher ones."""
    token = hub.token("rt-console", "guinan", "operator")
    console = await EventSocket.open(http, hub, token)
    await console.ws.send_json({"type": "monitor", "on": True})
    first = await console.wait_for("ack")
    await console.close()  # dropped

    terminal = await EventSocket.open(http, hub, hub.token("rt-terminal", "shangzhai", "terminal"))
    console = await EventSocket.open(http, hub, token)
    await console.ws.send_json({"type": "monitor", "on": True})
    again = await console.wait_for("ack")
    assert again["node"] == first["node"] and again["seq"] > first["seq"]  # something went by: reload

    async with http.get(
        f"{hub.url}/api/console/status", params={"site": "guinan"}, headers={"Authorization": f"Bearer {token}"}
    ) as response:
        status = await response.json()
    assert status["seq"] >= again["seq"]
    shangzhai = next(row for row in status["sites"] if row["id"] == "shangzhai")
    assert shangzhai["terminals"] >= 1  # the reload holds what was missed
    await terminal.close()
    presence = await console.wait_for("presence")
    assert presence["site_id"] == "shangzhai" and presence["seq"] > status["seq"]
    await console.close()


async def test_only_a_client_that_does_not_read_is_closed_as_too_slow(
    tmp_path: Path, redis_url: str, http: aiohttp.ClientSession
) -> None:
    """A burst far over HUB_WS_QUEUE_EVENTS: the socket that reads gets all of
    it; the one that reads nothing is closed with 1013 and the reason."""
    hub = start_hub(tmp_path, "--redis", redis_url, env={"HUB_WS_SEND_STALL_SECONDS": "2", "HUB_SNAPSHOT_SECONDS": "0"})
    client = aioredis.from_url(redis_url)
    room = "site-hedong"
    try:
        token = hub.sign("med-hedong", "hedong", "mediator")
        reader = await EventSocket.open(http, hub, token)
        idle = await http.ws_connect(f"{hub.url}/ws?token={token}")  # never read until the end
        for ws in (reader.ws, idle):
            await ws.send_json({"type": "join", "room": room})
        await reader.wait_for("joined")
        text = "话" * 6000  # 18 KB of UTF-8 per event: 1,500 of them are far more than any socket buffer
        for i in range(1500):  # as another process would: straight onto the event channel
            event = {"type": "chat", "room_id": room, "participant_id": "p-x", "name": "x", "text": text, "n": i}
            await client.publish("hub:events", json.dumps(event, ensure_ascii=False))
        await wait_until(lambda: len(reader.of("chat")) == 1500, 60)
        assert not reader.ws.closed
        await wait_until(lambda: "closing the event socket of med-hedong: too slow" in hub.log.read_text(), 20)
        while (msg := await idle.receive(timeout=20)).type == aiohttp.WSMsgType.TEXT:
            pass  # what it was sent before it was closed
        assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 1013, msg
        assert msg.extra.startswith("too slow: "), msg.extra
        await reader.close()
    finally:
        await client.aclose()
        hub.stop()
