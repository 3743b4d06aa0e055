"""A mediation case walks village -> township -> county: history, sessions and
recordings travel with it; permissions hold at every level; bad input is a
400 and changes nothing. Recordings come from a real WHIP publisher in the
case's rooms (mediation rooms record themselves on this hub)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from client import bot
from hub.core.livestate import LISTENER_QUEUE, EventFollower, MemoryLiveState, Record

from .conftest import HubProcess, event_socket, start_hub, wait_until
from .recording_helpers import call, video_packets

VILLAGE, TOWNSHIP, COUNTY = "qutancun", "qutan", "ledu"
SIBLING_TOWNSHIP, SIBLING_VILLAGE = "chengtai", "xinzhuang"
NEW_CASE = {
    "title": "宅基地边界纠纷",
    "dispute_type": "land",
    "parties": [
        {"name": "张三", "role": "applicant", "phone": "139 0000 0000"},
        {"name": "李四", "role": "respondent"},
    ],
    "summary": "两户因院墙位置发生争执",
}


@pytest.fixture(scope="module")
def case_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubProcess]:
    process = start_hub(tmp_path_factory.mktemp("cases"), env={"HUB_RECORD_MEDIATION_ROOMS": "true"})
    yield process
    process.stop()


async def publish_for(http: aiohttp.ClientSession, hub: HubProcess, token: str, room: str) -> bot.SyntheticVideo:
    """Publish 2 s of VP8 into a room over WHIP, then leave (the room's recording stops with it)."""
    video = bot.SyntheticVideo("vp8", 320, 240, 30, frames=60)
    publisher = await bot.publish(http, hub.url, token, room, [video])
    try:
        await wait_until(lambda: video.readyState == "ended", timeout=30)
        await asyncio.sleep(0.5)  # the last frames in flight
    finally:
        await publisher.close()
    return video


def assert_recorded(hub: HubProcess, recording: dict[str, Any], video: bot.SyntheticVideo) -> None:
    """The recording holds the very frames the publisher sent."""
    folder = hub.data / "recordings" / recording["id"]
    manifest = json.loads((folder / "manifest.json").read_text())
    [stream] = manifest["streams"]
    keys = [bot.frame_key("video/VP8", data) for data, _ in video_packets(folder, stream)]
    assert keys and all(key in video.sent for key in keys)
    assert len(keys) >= 0.9 * len(video.sent)


async def recordings_complete(http: aiohttp.ClientSession, url: str, token: str, count: int) -> dict[str, Any]:
    """The case once `count` of its session recordings are complete."""
    for _ in range(150):
        status, case = await call(http, "GET", url, token)
        assert status == 200
        if sum(r["status"] == "complete" for r in case["recordings"]) >= count:
            return case
        await asyncio.sleep(0.2)
    raise AssertionError(f"recordings did not complete: {case['recordings']}")


async def test_case_walks_from_village_to_county(case_hub: HubProcess, http: aiohttp.ClientSession):
    hub = case_hub
    village = hub.sign("m-qutancun", VILLAGE, "mediator")
    township = hub.sign("m-qutan", TOWNSHIP, "mediator")
    county = hub.sign("m-ledu", COUNTY, "mediator")
    sibling = hub.sign("m-chengtai", SIBLING_TOWNSHIP, "mediator")
    sibling_village = hub.sign("m-xinzhuang", SIBLING_VILLAGE, "mediator")
    terminal = hub.sign("t-qutancun", VILLAGE, "terminal")

    status, case = await call(http, "POST", f"{hub.url}/api/cases", village, json=NEW_CASE)
    assert status == 201, case
    assert (case["site_id"], case["origin_site_id"], case["status"]) == (VILLAGE, VILLAGE, "open")
    url = f"{hub.url}/api/cases/{case['id']}"
    assert (await call(http, "GET", url, terminal))[0] == 403  # parties' details are for case workers

    async with (
        event_socket(http, hub, township) as township_ws,
        event_socket(http, hub, sibling) as sibling_ws,
        event_socket(http, hub, county) as county_ws,
        event_socket(http, hub, village) as village_ws,
    ):
        # -- the village holds a session: a mediation room, recorded --------------
        status, session = await call(http, "POST", f"{url}/sessions", village)
        assert status == 201, session
        assert session["room"]["kind"] == "mediation" and session["room"]["case_id"] == case["id"]
        assert session["room"]["site_id"] == VILLAGE and session["admit"] == []
        village_video = await publish_for(http, hub, village, session["room_id"])
        detail = await recordings_complete(http, url, village, 1)
        assert detail["status"] == "mediating"
        [held] = detail["sessions"]
        assert held["started_at"] and held["ended_at"] and held["ended_at"] >= held["started_at"]
        [recording] = held["recordings"]
        assert recording["room_id"] == session["room_id"] and recording["playable"]
        assert_recorded(hub, recording, village_video)

        failed = {"status": "failed", "outcome": "双方未达成一致"}
        status, changed = await call(http, "PATCH", url, village, json=failed)
        assert status == 200 and (changed["status"], changed["result"]) == ("failed", "failed")
        status, problem = await call(http, "PATCH", url, village, json={"status": "agreement"})
        assert status == 409 and problem["status"] == 409  # failed -> mediating first

        # -- escalation to the township: it sees the case arrive, siblings do not --
        status, escalated = await call(http, "POST", f"{url}/escalate", village, json={"note": "请镇调委会调解"})
        assert status == 200 and (escalated["site_id"], escalated["status"]) == (TOWNSHIP, "escalated")
        arrived = await township_ws.wait_for("case-escalated")
        assert arrived["case"]["id"] == case["id"] and arrived["case"]["site_id"] == TOWNSHIP
        await county_ws.wait_for("case-escalated")  # levels above watch their branch too
        await sibling_ws.settle()
        assert not [m for m in sibling_ws.messages if m["type"].startswith("case-")]
        for outsider in (sibling, sibling_village):
            assert (await call(http, "GET", url, outsider))[0] == 403
            assert (await call(http, "PATCH", url, outsider, json={"outcome": "x"}))[0] == 403
        status, queue = await call(http, "GET", f"{hub.url}/api/cases?queue=mine", township)
        assert [c["id"] for c in queue] == [case["id"]]
        status, queue = await call(http, "GET", f"{hub.url}/api/cases?queue=mine", village)
        assert queue == []
        status, listed = await call(http, "GET", f"{hub.url}/api/cases", sibling)
        assert status == 200 and listed == []
        # The village keeps reading its case but no longer acts on it.
        assert (await call(http, "GET", url, village))[0] == 200
        assert (await call(http, "PATCH", url, village, json={"status": "closed"}))[0] == 403
        assert (await call(http, "POST", f"{url}/sessions", village))[0] == 403
        assert (await call(http, "POST", f"{url}/escalate", village, json={}))[0] == 403

        # -- the township holds the next session; the village is admitted and invited
        status, session2 = await call(http, "POST", f"{url}/sessions", township)
        assert status == 201 and session2["room"]["site_id"] == TOWNSHIP and session2["admit"] == [VILLAGE]
        invitation = await village_ws.wait_for("invitation")
        assert invitation["room_id"] == session2["room_id"]
        await village_ws.ws.send_json({"type": "join", "room": session2["room_id"]})
        joined = await village_ws.wait_for("joined")
        assert joined["room"]["id"] == session2["room_id"]
        await sibling_ws.ws.send_json({"type": "join", "room": session2["room_id"]})
        refused = await sibling_ws.wait_for("error")
        assert refused["code"] == "forbidden"
        # The village mediator's camera goes into the township's room.
        township_video = await publish_for(http, hub, village, session2["room_id"])
        await village_ws.ws.send_json({"type": "leave", "room": session2["room_id"]})
        await village_ws.wait_for("left")
        await recordings_complete(http, url, township, 2)
        status, changed = await call(http, "PATCH", url, township, json={"status": "failed"})
        assert status == 200

        # -- on to the county ------------------------------------------------------
        status, escalated = await call(http, "POST", f"{url}/escalate", township, json={"note": "涉及土地确权"})
        assert status == 200 and escalated["site_id"] == COUNTY
        arrived = await county_ws.wait_for("case-escalated", 2)
        assert arrived["case"]["site_id"] == COUNTY
        await sibling_ws.settle()
        assert not [m for m in sibling_ws.messages if m["type"].startswith("case-")]

    status, at_county = await call(http, "GET", url, county)
    assert status == 200
    moves = [(h["from_site"], h["to_site"]) for h in at_county["history"] if h["action"] == "escalated"]
    assert moves == [(VILLAGE, TOWNSHIP), (TOWNSHIP, COUNTY)]
    assert [h["note"] for h in at_county["history"] if h["action"] == "escalated"] == ["请镇调委会调解", "涉及土地确权"]
    assert [h["action"] for h in at_county["history"]][:2] == ["opened", "session"]
    assert all(h["user"] and h["at"] for h in at_county["history"])
    assert [s["site_id"] for s in at_county["sessions"]] == [VILLAGE, TOWNSHIP]
    assert [len(s["recordings"]) for s in at_county["sessions"]] == [1, 1]
    assert all(r["playable"] and r["status"] == "complete" for r in at_county["recordings"])
    assert_recorded(hub, at_county["sessions"][1]["recordings"][0], township_video)
    # The origin reads all of it; the township's recording belongs to the township.
    status, at_village = await call(http, "GET", url, village)
    assert [r["playable"] for r in at_village["recordings"]] == [True, False]
    assert at_village["actions"] == {"statuses": [], "session": False, "escalate": False, "refer": False, "answer": []}
    assert list(at_village["sites"]) == [VILLAGE, TOWNSHIP, COUNTY]  # named for a reader below them
    assert at_county["actions"] == {
        "statuses": ["mediating", "closed"],
        "session": True,
        "escalate": True,
        "refer": True,
        "answer": [],
    }
    # The township reads but no longer acts; the county does.
    assert (await call(http, "PATCH", url, township, json={"status": "mediating"}))[0] == 403
    status, changed = await call(http, "PATCH", url, county, json={"status": "mediating"})
    assert status == 200 and changed["status"] == "mediating" and changed["result"] is None
    agreed = {"status": "agreement", "outcome": "县司法局主持达成协议"}
    status, changed = await call(http, "PATCH", url, county, json=agreed)
    assert status == 200 and (changed["result"], changed["outcome"]) == ("agreement", "县司法局主持达成协议")
    assert (await call(http, "POST", f"{url}/escalate", county, json={}))[0] == 409  # agreed cases stay
    assert (await call(http, "POST", f"{url}/sessions", county))[0] == 409


BAD_BODIES: list[Any] = [
    {k: v for k, v in NEW_CASE.items() if k != "title"},
    NEW_CASE | {"title": ""},
    NEW_CASE | {"title": "x" * 201},
    NEW_CASE | {"dispute_type": "murder"},
    NEW_CASE | {"parties": []},
    NEW_CASE | {"parties": [{"name": ""}]},
    NEW_CASE | {"parties": [{"name": "王五", "phone": "<script>"}]},
    NEW_CASE | {"parties": "张三"},
    NEW_CASE | {"status": "closed"},  # unknown fields are refused, not ignored
    NEW_CASE | {"summary": 5},
    [NEW_CASE],
]


async def test_bad_case_input_is_400_and_changes_nothing(case_hub: HubProcess, http: aiohttp.ClientSession):
    mediator = case_hub.sign("m-bad", "hongzhuang", "mediator")
    list_url = f"{case_hub.url}/api/cases"
    for body in BAD_BODIES:
        status, problem = await call(http, "POST", list_url, mediator, json=body)
        assert status == 400 and problem["status"] == 400 and problem["detail"], body
    assert (await call(http, "GET", list_url, mediator))[1] == []


async def test_bad_changes_are_refused_and_change_nothing(case_hub: HubProcess, http: aiohttp.ClientSession):
    mediator = case_hub.sign("m-taizi", "taizi", "mediator")
    status, case = await call(http, "POST", f"{case_hub.url}/api/cases", mediator, json=NEW_CASE)
    url = f"{case_hub.url}/api/cases/{case['id']}"
    bad = ({}, {"status": "resolved"}, {"outcome": 3}, {"status": "closed", "extra": 1}, "closed", {"version": 1})
    versions = ({"outcome": "x", "version": 0}, {"outcome": "x", "version": "1"}, {"outcome": "x", "version": True})
    for body in (*bad, *versions):
        status, problem = await call(http, "PATCH", url, mediator, json=body)
        assert status == 400, problem
    assert (
        await call(
            http, "PATCH", url, mediator, data=aiohttp.StringPayload("{not json", content_type="application/json")
        )
    )[0] == 400
    assert (await call(http, "POST", f"{url}/escalate", mediator, json={"note": "x" * 1001}))[0] == 400
    assert (await call(http, "POST", f"{url}/escalate", mediator, json={"version": 1.5}))[0] == 400
    # A change decided on a version the case is not at: 409 with the case as it is.
    stale = (("PATCH", url, {"outcome": "x", "version": 2}), ("POST", f"{url}/escalate", {"version": 7}))
    for method, path, body in stale:
        status, problem = await call(http, method, path, mediator, json=body)
        assert status == 409 and problem["case"]["version"] == 1 and problem["case"]["status"] == "open", problem
    # Escalation has its own call.
    assert (await call(http, "PATCH", url, mediator, json={"status": "escalated"}))[0] == 409
    assert (await call(http, "GET", f"{case_hub.url}/api/cases?status=whatever", mediator))[0] == 400
    assert (await call(http, "GET", f"{case_hub.url}/api/cases?queue=all", mediator))[0] == 400
    assert (await call(http, "GET", f"{case_hub.url}/api/cases?site=chengtai", mediator))[0] == 403
    assert (await call(http, "GET", f"{case_hub.url}/api/cases/case-nothing", mediator))[0] == 404
    other_site = NEW_CASE | {"site_id": "hongzhuang"}  # a sibling village: outside the jurisdiction
    assert (await call(http, "POST", f"{case_hub.url}/api/cases", mediator, json=other_site))[0] == 403
    status, unchanged = await call(http, "GET", url, mediator)
    assert unchanged["status"] == "open" and unchanged["updated_at"] == case["updated_at"]
    assert unchanged["version"] == case["version"] == 1
    assert [h["action"] for h in unchanged["history"]] == ["opened"]


async def test_a_follower_that_falls_behind_follows_again():
    """Cases keep session times from the room events through an EventFollower:
    dropped for falling behind, it subscribes again instead of going deaf,
    and catches up once (snapshots look at what is live then)."""
    state = MemoryLiveState("node-test")
    seen: list[Record] = []
    resumed: list[int] = []

    async def handle(event: Record) -> None:
        seen.append(event)

    async def caught_up() -> None:
        resumed.append(len(seen))

    follower = EventFollower(state, handle, "test", resumed=caught_up)
    follower.start()
    try:
        for i in range(LISTENER_QUEUE + 10):  # no await yields here: the queue overflows
            await state.emit({"type": "flood", "i": i})
        await asyncio.sleep(0.05)
        await state.emit({"type": "after"})
        await wait_until(lambda: any(e["type"] == "after" for e in seen), timeout=5)
        assert len(resumed) == 1 and resumed[0] < len(seen)  # once, before the event published after the flood
    finally:
        await follower.stop()


async def test_escalation_reaches_the_township_on_another_hub_process(
    tmp_path: Path, redis_url: str, http: aiohttp.ClientSession
):
    """Two hub processes share Redis (events) and the data directory (cases):
    a case escalated on one arrives live at a township socket on the other."""
    first = start_hub(tmp_path, "--redis", redis_url)
    second = start_hub(tmp_path, "--redis", redis_url)
    try:
        village = first.sign("m-qutancun", VILLAGE, "mediator")
        township = first.sign("m-qutan", TOWNSHIP, "mediator")
        async with event_socket(http, second, township) as township_ws:
            status, case = await call(http, "POST", f"{first.url}/api/cases", village, json=NEW_CASE)
            assert status == 201
            status, _ = await call(http, "POST", f"{first.url}/api/cases/{case['id']}/escalate", village, json={})
            assert status == 200
            arrived = await township_ws.wait_for("case-escalated")
        assert arrived["case"]["id"] == case["id"] and arrived["from_site"] == VILLAGE
        status, queue = await call(http, "GET", f"{second.url}/api/cases?queue=mine", township)
        assert [c["id"] for c in queue] == [case["id"]]
    finally:
        first.stop()
        second.stop()


#: Outcomes of an escalation racing a status change of an open village case,
#: by which of them was written: (site, status, history after "opened").
RACE_OUTCOMES = {
    ("escalate", "update"): (TOWNSHIP, "mediating", ["escalated", "status"]),
    ("update", "escalate"): (TOWNSHIP, "escalated", ["status", "escalated"]),
    ("escalate",): (TOWNSHIP, "escalated", ["escalated"]),
    ("update",): (VILLAGE, "mediating", ["status"]),
}


@pytest.fixture
def two_case_hubs(tmp_path: Path, redis_url: str) -> Iterator[tuple[HubProcess, HubProcess]]:
    """Two hub processes on one data directory (one database) and one Redis."""
    first = start_hub(tmp_path, "--redis", redis_url)
    second = start_hub(tmp_path, "--redis", redis_url)
    yield first, second
    first.stop()
    second.stop()


async def test_an_escalation_and_a_change_at_once_on_two_hub_processes_lose_nothing(
    two_case_hubs: tuple[HubProcess, HubProcess], http: aiohttp.ClientSession
):
    """Round after round, one process escalates a case while the other moves it
    to mediating. Each write applies to the version it was decided on, so the
    case ends in one of RACE_OUTCOMES and its history holds exactly the writes
    answered 200, in the order of their versions. Unversioned, the loser is
    decided again on the winner's case: both are written. Both naming
    version 1: exactly one wins, the other is a 409 with the winner's case."""
    first, second = two_case_hubs
    # A township mediator still works the case once it is escalated to the township.
    township = first.sign("m-qutan", TOWNSHIP, "mediator")
    seen: dict[tuple[str, ...], int] = {}
    for versioned in (False, True):
        for _ in range(12):
            status, case = await call(
                http, "POST", f"{first.url}/api/cases", township, json=NEW_CASE | {"site_id": VILLAGE}
            )
            assert status == 201 and case["version"] == 1
            pin = {"version": 1} if versioned else {}
            url = f"/api/cases/{case['id']}"
            (s_escalate, escalated), (s_update, updated) = await asyncio.gather(
                call(http, "POST", f"{first.url}{url}/escalate", township, json={"note": "升级"} | pin),
                call(http, "PATCH", f"{second.url}{url}", township, json={"status": "mediating"} | pin),
            )
            assert {s_escalate, s_update} <= {200, 409}, (escalated, updated)
            status, final = await call(http, "GET", f"{second.url}{url}", township)
            assert status == 200
            answers = (("escalate", s_escalate, escalated), ("update", s_update, updated))
            won = {name: body for name, s, body in answers if s == 200}
            order = tuple(sorted(won, key=lambda name: won[name]["version"]))
            assert order in RACE_OUTCOMES, (escalated, updated)
            site, state, history = RACE_OUTCOMES[order]
            assert (final["site_id"], final["status"]) == (site, state)
            assert [h["action"] for h in final["history"]] == ["opened", *history]
            assert final["version"] == 1 + len(won) == max(b["version"] for b in won.values())
            for refused in (body for _, s, body in answers if s == 409):
                assert refused["case"]["id"] == case["id"]
                assert refused["case"]["version"] >= 2  # the case as the winner left it
            assert len(won) == (1 if versioned else 2), (escalated, updated)
            seen[order] = seen.get(order, 0) + 1
    print("race outcomes:", seen)

    # A session held on one process while the other notes an outcome: the room
    # is open either way, so both are written and the case is being mediated.
    for _ in range(6):
        status, case = await call(
            http, "POST", f"{first.url}/api/cases", township, json=NEW_CASE | {"site_id": VILLAGE}
        )
        url = f"/api/cases/{case['id']}"
        (s_session, session), (s_note, noted) = await asyncio.gather(
            call(http, "POST", f"{first.url}{url}/sessions", township),
            call(http, "PATCH", f"{second.url}{url}", township, json={"outcome": "双方同意再谈"}),
        )
        assert (s_session, s_note) == (201, 200), (session, noted)
        await call(http, "DELETE", f"{first.url}/api/rooms/{session['room_id']}", township)
        status, final = await call(http, "GET", f"{second.url}{url}", township)
        assert (final["status"], final["outcome"], final["version"]) == ("mediating", "双方同意再谈", 3)
        assert sorted(h["action"] for h in final["history"]) == ["opened", "outcome", "session", "status"]
