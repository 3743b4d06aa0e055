"""Departments beside the sites: a case walks from a village mediator through
a referral to the township's judicial office and on to the county court for
judicial confirmation. Each department sees its referral arrive live, reads
the case with its history, sessions and recordings, joins a session room
and watches the Python client publishing there, and records its answer. A
police officer of the same township reaches none of it, nor any other case
of the township, nor a stream of a room it was not invited into.
"""

from __future__ import annotations

import asyncio
import csv
import io
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from client import bot
from hub.config import Settings
from hub.core.sites import Department, Site, SiteTree, SiteTreeError
from hub.core.tokens import Claims, issue

from .conftest import HubProcess, event_socket, start_hub, wait_until
from .recording_helpers import auth, call

VILLAGE, SIBLING_VILLAGE, TOWNSHIP, COUNTY = "shangzhai", "rianxiuma", "guomaying", "guinan"
JUDICIAL, POLICE, COURT = "guomaying-judicial", "guomaying-police", "guinan-court"
NEW_CASE = {
    "title": "草场边界纠纷",
    "dispute_type": "land",
    "parties": [{"name": "才让", "role": "applicant"}, {"name": "多杰", "role": "respondent"}],
}


@pytest.fixture(scope="module")
def dept_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubProcess]:
    process = start_hub(tmp_path_factory.mktemp("departments"), env={"HUB_RECORD_MEDIATION_ROOMS": "true"})
    yield process
    process.stop()


def department_token(hub: HubProcess, user: str, department: str, name: str | None = None) -> str:
    """What `python -m hub token --department` prints, signed in this process."""
    claims = Claims(user=user, site=department, role="mediator", name=name, department=department)
    return issue(Settings(data=hub.data).keys(), claims)


async def whep_status(http: aiohttp.ClientSession, hub: HubProcess, token: str, stream_id: str) -> int | None:
    """The status a WHEP viewer gets (None: it was admitted and saw frames)."""
    try:
        viewer = await bot.view(http, hub.url, token, stream_id, kinds=("video",))
    except bot.ClientError as exc:
        return int(str(exc).split(": ", 1)[1].split(" ", 1)[0])
    try:
        await wait_until(lambda: len(viewer.logs["video"].frames) >= 5, timeout=20)
    finally:
        await viewer.close()
    return None


async def watch_session(
    http: aiohttp.ClientSession, hub: HubProcess, publisher_token: str, room_id: str, viewers: list[str]
) -> None:
    """A Python client publishes into the room; each viewer (admitted) receives its frames."""
    video = bot.SyntheticVideo("vp8", 320, 240, 30, frames=150)
    publisher = await bot.publish(http, hub.url, publisher_token, room_id, [video])
    try:
        stream_id = publisher.resource_id
        for token in viewers:
            assert await whep_status(http, hub, token, stream_id) is None
    finally:
        await publisher.close()


async def test_a_case_walks_through_two_departments(dept_hub: HubProcess, http: aiohttp.ClientSession):
    hub = dept_hub
    village = hub.sign("m-shangzhai", VILLAGE, "mediator")
    township = hub.sign("m-guomaying", TOWNSHIP, "mediator")
    county = hub.sign("m-guinan", COUNTY, "mediator")
    sibling = hub.sign("m-rianxiuma", SIBLING_VILLAGE, "mediator")
    judicial = department_token(hub, "sf-li", JUDICIAL, "李司法")
    court = department_token(hub, "fy-zhao", COURT, "赵法官")
    police = department_token(hub, "pcs-wang", POLICE, "王警官")

    status, case = await call(http, "POST", f"{hub.url}/api/cases", village, json=NEW_CASE)
    assert status == 201 and case["departments"] == []
    status, other = await call(http, "POST", f"{hub.url}/api/cases", township, json=NEW_CASE | {"title": "邻里"})
    assert status == 201
    url = f"{hub.url}/api/cases/{case['id']}"
    for department in (judicial, court, police):
        assert (await call(http, "GET", url, department))[0] == 403  # nothing referred yet

    async with (
        event_socket(http, hub, judicial) as judicial_ws,
        event_socket(http, hub, court) as court_ws,
        event_socket(http, hub, police) as police_ws,
    ):
        # -- the village refers the case to the township's judicial office ------
        body = {"department_id": JUDICIAL, "ask": "legal_advice", "note": "请司法所协助调解"}
        status, referral = await call(http, "POST", f"{url}/referrals", village, json=body)
        assert status == 201, referral
        assert (referral["department"]["name"], referral["decision"]) == ("过马营镇司法所", None)
        arrived = await judicial_ws.wait_for("case-referred")
        assert arrived["case"]["id"] == case["id"] and arrived["referral"]["id"] == referral["id"]
        status, read = await call(http, "GET", url, judicial)
        assert status == 200 and read["actions"]["answer"] == [referral["id"]]
        assert [h["action"] for h in read["history"]] == ["opened", "referred"]
        status, listed = await call(http, "GET", f"{hub.url}/api/cases", judicial)
        assert [c["id"] for c in listed] == [case["id"]]
        # A department acts on the case only by answering.
        assert (await call(http, "PATCH", url, judicial, json={"status": "closed"}))[0] == 403
        assert (await call(http, "POST", f"{url}/sessions", judicial))[0] == 403

        # -- a session: the office is admitted and invited, joins, watches ---------
        status, session = await call(http, "POST", f"{url}/sessions", village)
        assert status == 201 and JUDICIAL in session["room"]["admit"]
        invitation = await judicial_ws.wait_for("invitation")
        assert invitation["room_id"] == session["room_id"]
        await judicial_ws.ws.send_json({"type": "join", "room": session["room_id"]})
        joined = await judicial_ws.wait_for("joined")
        assert joined["participant"]["department"]["id"] == JUDICIAL  # the roster names the department
        await police_ws.ws.send_json({"type": "join", "room": session["room_id"]})
        assert (await police_ws.wait_for("error"))["code"] == "forbidden"
        await watch_session(http, hub, village, session["room_id"], [judicial])
        await judicial_ws.ws.send_json({"type": "leave", "room": session["room_id"]})
        await judicial_ws.wait_for("left")

        answer = {"decision": "accepted", "outcome": "司法所主持调解，双方达成协议"}
        path = f"{url}/referrals/{referral['id']}/answer"
        assert (await call(http, "POST", path, police, json=answer))[0] == 403
        status, answered = await call(http, "POST", path, judicial, json=answer)
        assert status == 200 and (answered["decision"], answered["answered_by"]) == ("accepted", "sf-li")
        assert (await call(http, "POST", path, judicial, json=answer))[0] == 409  # once

        # -- on to the county court for judicial confirmation ---------------------
        body = {"department_id": COURT, "ask": "judicial_confirmation", "note": "申请司法确认调解协议"}
        status, to_court = await call(http, "POST", f"{url}/referrals", village, json=body)
        assert status == 201, to_court
        arrived = await court_ws.wait_for("case-referred")
        assert arrived["referral"]["ask"] == "judicial_confirmation"
        status, session2 = await call(http, "POST", f"{url}/sessions", village)
        assert status == 201 and {JUDICIAL, COURT} <= set(session2["room"]["admit"])
        await court_ws.wait_for("invitation")
        await court_ws.ws.send_json({"type": "join", "room": session2["room_id"]})
        await court_ws.wait_for("joined")
        await watch_session(http, hub, village, session2["room_id"], [court])
        status, changed = await call(http, "PATCH", url, village, json={"status": "agreement"})
        assert status == 200
        confirm = {"decision": "accepted", "outcome": "调解协议有效", "document_no": "(2026)青2525民特1号"}
        status, confirmed = await call(http, "POST", f"{url}/referrals/{to_court['id']}/answer", court, json=confirm)
        assert status == 200 and confirmed["document_no"] == "(2026)青2525民特1号"

        # The police station heard nothing of it.
        await police_ws.settle()
        assert not [m for m in police_ws.messages if m["type"].startswith("case-") or m["type"] == "invitation"]

        # The console shows the departments beside the township, online or not.
        operator = hub.sign("op-guomaying", TOWNSHIP, "operator")
        status, console = await call(http, "GET", f"{hub.url}/api/console/status?site={TOWNSHIP}", operator)
        assert status == 200
        [row] = [s for s in console["sites"] if s["id"] == TOWNSHIP]
        online = {d["id"]: d["online"] for d in row["departments"]}
        assert online[POLICE] and online[JUDICIAL] and not online["guomaying-tribunal"]

    # -- the court reads all of it, its recordings too ------------------------------
    status, read = await call(http, "GET", url, court)
    assert status == 200
    steps = [(h["action"], h["department"]) for h in read["history"] if h["action"].startswith(("referr", "session"))]
    assert steps == [
        ("referred", JUDICIAL),
        ("session", None),
        ("referral-answered", JUDICIAL),
        ("referred", COURT),
        ("session", None),
        ("referral-answered", COURT),
    ]
    assert [(r["department_id"], r["decision"]) for r in read["referrals"]] == [
        (JUDICIAL, "accepted"),
        (COURT, "accepted"),
    ]
    assert read["departments"] == sorted([JUDICIAL, COURT])
    for _ in range(100):
        status, read = await call(http, "GET", url, court)
        if len(read["recordings"]) == 2 and all(r["status"] == "complete" for r in read["recordings"]):
            break
        await asyncio.sleep(0.2)
    assert len(read["recordings"]) == 2 and all(r["playable"] for r in read["recordings"])
    recording = read["recordings"][0]["id"]
    assert (await call(http, "GET", f"{hub.url}/api/recordings/{recording}", court))[0] == 200
    async with http.get(f"{hub.url}/api/recordings/{recording}/files/manifest.json", headers=auth(court)) as r:
        assert r.status == 200
    async with http.get(f"{hub.url}/api/recordings/{recording}/files/manifest.json", headers=auth(police)) as r:
        assert r.status == 403

    # The referring site and the levels above read it; siblings and the police do not.
    for reader in (village, township, county):
        assert (await call(http, "GET", url, reader))[0] == 200
    assert (await call(http, "GET", url, sibling))[0] == 403
    for case_id in (case["id"], other["id"]):
        assert (await call(http, "GET", f"{hub.url}/api/cases/{case_id}", police))[0] == 403
    status, listed = await call(http, "GET", f"{hub.url}/api/cases", police)
    assert status == 200 and listed == []
    assert (await call(http, "GET", f"{hub.url}/api/cases?site={TOWNSHIP}", police))[0] == 403
    assert (await call(http, "GET", f"{hub.url}/api/recordings?site={TOWNSHIP}", police))[0] == 403
    assert await call(http, "GET", f"{hub.url}/api/recordings", police) == (200, [])  # its own room's: none
    assert (await call(http, "GET", f"{hub.url}/api/recordings?site={POLICE}", township))[0] == 403

    # -- statistics of referrals by department kind and answer ----------------------
    status, stats = await call(http, "GET", f"{hub.url}/api/stats?site={COUNTY}", county)
    assert status == 200
    by_kind = {row["kind"]: row for row in stats["by_referral"]}
    assert (by_kind["justice"]["accepted"], by_kind["court"]["accepted"], by_kind["police"]["referrals"]) == (1, 1, 0)
    async with http.get(f"{hub.url}/api/stats.csv?site={COUNTY}", headers=auth(county)) as r:
        rows = list(csv.reader(io.StringIO((await r.read()).decode("utf-8-sig"))))
    assert ["referral", "court", "accepted", "1"] in rows
    # A department has no branch to count and no site to ring: a clear 403, not 404 "no site".
    for method, path in (("GET", "/api/stats"), ("POST", "/api/calls")):
        status, problem = await call(http, method, f"{hub.url}{path}", police, json={} if method == "POST" else None)
        assert (status, "department" in problem["detail"]) == (403, True), (path, problem)


async def test_a_department_views_no_stream_of_a_room_it_was_not_invited_into(
    dept_hub: HubProcess, http: aiohttp.ClientSession
):
    hub = dept_hub
    township = hub.sign("m-guomaying2", TOWNSHIP, "mediator")
    police = department_token(hub, "pcs-zhang", POLICE)
    video = bot.SyntheticVideo("vp8", 320, 240, 30, frames=150)
    status, room = await call(
        http, "POST", f"{hub.url}/api/rooms", township, json={"site_id": TOWNSHIP, "kind": "mediation", "title": "x"}
    )
    assert status == 201
    for room_id in (f"site-{TOWNSHIP}", room["id"]):
        publisher = await bot.publish(http, hub.url, township, room_id, [video])
        try:
            assert await whep_status(http, hub, police, publisher.resource_id) == 403
        finally:
            await publisher.close()
    # Its own department's room is its own.
    status, own = await call(http, "GET", f"{hub.url}/api/rooms/dept-{POLICE}", police)
    assert status == 200 and own["site_id"] == POLICE
    assert (await call(http, "GET", f"{hub.url}/api/rooms/dept-{POLICE}", township))[0] == 403


async def test_bad_referrals_are_refused_and_store_nothing(dept_hub: HubProcess, http: aiohttp.ClientSession):
    hub = dept_hub
    village = hub.sign("m-shangzhai3", VILLAGE, "mediator")
    status, case = await call(http, "POST", f"{hub.url}/api/cases", village, json=NEW_CASE)
    assert status == 201
    url = f"{hub.url}/api/cases/{case['id']}"
    before = (await call(http, "GET", url, village))[1]
    for body, expected in (
        ({"department_id": "no-such-office", "ask": "legal_advice"}, 404),
        ({"department_id": JUDICIAL, "ask": "arrest"}, 400),
        ({"department_id": JUDICIAL, "ask": "legal_advice", "note": "x" * 1001}, 400),
        ({"department_id": "chengdong-court", "ask": "judicial_confirmation"}, 400),  # not beside the case
        ({"department_id": JUDICIAL}, 400),
        ({"department_id": JUDICIAL, "ask": "legal_advice", "extra": 1}, 400),
    ):
        status, problem = await call(http, "POST", f"{url}/referrals", village, json=body)
        assert status == expected and problem["status"] == expected, (body, problem)
    assert (await call(http, "GET", url, village))[1] == before
    status, problem = await call(http, "POST", f"{url}/referrals/ref-nothing/answer", village, json={"decision": "x"})
    assert status == 400


def test_a_site_file_with_bad_departments_is_refused():
    root = Site("root", "省", "province", None)
    good = Department("root-court", "root", "court", "法院")
    assert SiteTree([root], [good]).covers("root-court", "root-court")
    assert not SiteTree([root], [good]).covers("root", "root-court")  # beside, not below
    for bad in (
        Department("root", "root", "court", "法院"),  # a site's id
        Department("x", "nowhere", "court", "法院"),
        Department("x", "root", "bank", "银行"),
        Department("x y", "root", "court", "法院"),
    ):
        with pytest.raises(SiteTreeError):
            SiteTree([root], [bad])


async def test_a_referral_reaches_the_department_on_another_hub_process(
    tmp_path: Path, redis_url: str, http: aiohttp.ClientSession
):
    """Two hub processes share Redis and the database: a case referred on one
    arrives live at the police station's socket on the other, and the station's
    presence reaches the township's console there."""
    first = start_hub(tmp_path, "--redis", redis_url)
    second = start_hub(tmp_path, "--redis", redis_url)
    try:
        village = first.sign("m-shangzhai4", VILLAGE, "mediator")
        operator = first.sign("op-guomaying4", TOWNSHIP, "operator")
        police = department_token(first, "pcs-li", POLICE)
        async with event_socket(http, first, operator) as console_ws:
            await console_ws.ws.send_json({"type": "monitor", "on": True})
            await console_ws.wait_for("ack")
            async with event_socket(http, second, police) as police_ws:
                # (The operator's own presence event may come first, through Redis.)
                await wait_until(lambda: any(p["site_id"] == POLICE for p in console_ws.of("presence")), 15)
                [presence] = [p for p in console_ws.of("presence") if p["site_id"] == POLICE]
                assert (presence["beside"], presence["online"]) == (TOWNSHIP, 1)
                status, case = await call(http, "POST", f"{first.url}/api/cases", village, json=NEW_CASE)
                assert status == 201
                body = {"department_id": POLICE, "ask": "police_handling", "note": "涉嫌寻衅滋事"}
                url = f"{first.url}/api/cases/{case['id']}/referrals"
                status, referral = await call(http, "POST", url, village, json=body)
                assert status == 201
                arrived = await police_ws.wait_for("case-referred")
        assert arrived["referral"]["id"] == referral["id"]
        status, read = await call(http, "GET", f"{second.url}/api/cases/{case['id']}", police)
        assert status == 200 and read["actions"]["answer"] == [referral["id"]]
    finally:
        first.stop()
        second.stop()
