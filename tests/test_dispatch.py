"""Emergency calls and convening against real hub processes: who is rung,
who may answer (exactly one, also across two processes sharing Redis), the
call room, cancel and timeout, the durable call log; convening invites
exactly the chosen sites, admits them and keeps the roll call."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from .conftest import HubProcess, start_hub
from .test_room_api import PROBLEM, auth, socket

VILLAGE = "rianxiuma"


@pytest.fixture(scope="module")
def tokens(hub: HubProcess) -> dict[str, str]:
    return {
        "caller": hub.token("term-rianxiuma", VILLAGE, "terminal"),
        "villager": hub.token("med-rianxiuma", VILLAGE, "mediator"),
        "county": hub.token("op-guinan", "guinan", "operator"),
        "prefecture": hub.token("op-hainan", "hainan", "operator"),
        "other": hub.token("op-golmud", "golmud", "operator"),
    }


async def post(http: aiohttp.ClientSession, url: str, token: str, body: object = None) -> tuple[int, dict]:
    async with http.post(url, headers=auth(token), json=body) as r:
        return r.status, await r.json(content_type=None)


async def get(http: aiohttp.ClientSession, url: str, token: str) -> tuple[int, object]:
    async with http.get(url, headers=auth(token)) as r:
        return r.status, await r.json(content_type=None)


async def test_call_rings_above_the_site_and_exactly_one_answers(hub: HubProcess, http: aiohttp.ClientSession, tokens):
    async with (
        socket(http, hub, tokens["caller"]) as caller,
        socket(http, hub, tokens["county"]) as county,
        socket(http, hub, tokens["prefecture"]) as prefecture,
        socket(http, hub, tokens["other"]) as other,
        socket(http, hub, tokens["villager"]) as villager,
    ):
        status, call = await post(http, f"{hub.url}/api/calls", tokens["caller"], {"note": "有人落水"})
        assert status == 201, call
        assert call["site_id"] == VILLAGE and call["state"] == "ringing" and call["note"] == "有人落水"
        assert call["from"] == {"user": "term-rianxiuma", "name": "term-rianxiuma"}

        # Both operators above the village are rung; another county's is not, nor the village's own people.
        for operator in (county, prefecture):
            ringing = await operator.next("call-ringing")
            assert ringing["call"]["id"] == call["id"] and ringing["call"]["site_name"] == "日安秀麻村"
        for outsider in (other, villager):
            assert await outsider.nothing_of("call-ringing", 0.3)

        # A console opened later still finds the ringing call; the other county's does not.
        status, listed = await get(http, f"{hub.url}/api/calls", tokens["prefecture"])
        assert status == 200 and listed[0]["id"] == call["id"] and listed[0]["state"] == "ringing"
        status, listed = await get(http, f"{hub.url}/api/calls", tokens["other"])
        assert status == 200 and call["id"] not in {c["id"] for c in listed}

        # One ringing call per site.
        status, busy = await post(http, f"{hub.url}/api/calls", tokens["villager"])
        assert status == 409 and busy["call"]["id"] == call["id"]

        answer = f"{hub.url}/api/calls/{call['id']}/answer"
        for who in ("other", "caller", "villager"):  # outside the jurisdiction; not an operator
            status, problem = await post(http, answer, tokens[who])
            assert status == 403, (who, problem)

        (s1, r1), (s2, r2) = await asyncio.gather(
            post(http, answer, tokens["county"]), post(http, answer, tokens["prefecture"])
        )
        assert sorted((s1, s2)) == [200, 409], (r1, r2)
        won, lost = (r1, r2) if s1 == 200 else (r2, r1)
        winner = won["call"]["answered_by"]["user"]
        assert lost["call"]["answered_by"]["user"] == winner and lost["call"]["state"] == "answered"
        assert winner in lost["detail"] or won["call"]["answered_by"]["name"] in lost["detail"]
        room = won["room"]
        assert room["kind"] == "call" and room["site_id"] == VILLAGE and room["call_id"] == call["id"]

        # Everyone rung, and the caller, learns who answered and where to go.
        for s in (county, prefecture, caller):
            event = await s.next("call-answered")
            assert event["room_id"] == room["id"] and event["answered_by"]["user"] == winner
        assert await other.nothing_of("call-answered", 0.3)

        # The caller enters the call room; the other county's operator cannot.
        joined = await caller.request({"type": "join", "room": room["id"]})
        assert joined["type"] == "joined" and joined["room"]["kind"] == "call"
        assert (await other.request({"type": "join", "room": room["id"]}))["code"] == "forbidden"

        status, listed = await get(http, f"{hub.url}/api/calls", tokens["county"])
        done = next(c for c in listed if c["id"] == call["id"])
        assert done["state"] == "answered" and done["answered_by"]["user"] == winner and done["room_id"] == room["id"]

        # The site may call again once answered; its caller cancels.
        status, again = await post(http, f"{hub.url}/api/calls", tokens["caller"])
        assert status == 201
        await county.next("call-ringing")
        async with http.delete(f"{hub.url}/api/calls/{again['id']}", headers=auth(tokens["villager"])) as r:
            assert r.status == 403  # only the caller cancels
        async with http.delete(f"{hub.url}/api/calls/{again['id']}", headers=auth(tokens["caller"])) as r:
            assert r.status == 200 and (await r.json())["state"] == "cancelled"
        ended = await county.next("call-ended")
        assert ended["call"]["id"] == again["id"] and ended["call"]["state"] == "cancelled"
        status, problem = await post(http, f"{hub.url}/api/calls/{again['id']}/answer", tokens["county"])
        assert status == 409 and problem["call"]["state"] == "cancelled"


@pytest.mark.parametrize(
    ("who", "body", "status"),
    [
        ("caller", {"note": 5}, 400),
        ("caller", {"note": "x" * 201}, 400),
        ("caller", [1], 400),
    ],
)
async def test_bad_calls_change_nothing(hub: HubProcess, http: aiohttp.ClientSession, tokens, who, body, status):
    got, problem = await post(http, f"{hub.url}/api/calls", tokens[who], body)
    assert got == status and problem["status"] == status
    _, listed = await get(http, f"{hub.url}/api/calls", tokens["county"])
    assert not [c for c in listed if c["state"] == "ringing"]


async def test_guests_cannot_call(hub: HubProcess, http: aiohttp.ClientSession):
    guest = hub.token("party", VILLAGE, "guest", room=f"site-{VILLAGE}")
    status, problem = await post(http, f"{hub.url}/api/calls", guest)
    assert status == 403
    async with http.post(f"{hub.url}/api/calls/call-nope/answer", headers=auth(guest)) as r:
        assert r.status == 403 and r.content_type == PROBLEM


@pytest.fixture
def quick_hub(tmp_path: Path) -> Iterator[HubProcess]:
    process = start_hub(tmp_path, env={"HUB_CALL_RING_SECONDS": "1.5"})
    yield process
    process.stop()


async def test_unanswered_call_is_missed_and_logged(quick_hub: HubProcess, http: aiohttp.ClientSession, tmp_path: Path):
    caller = quick_hub.token("term-taizi", "taizi", "terminal")
    operator = quick_hub.token("op-ledu", "ledu", "operator")
    async with socket(http, quick_hub, operator) as ops, socket(http, quick_hub, caller) as term:
        status, call = await post(http, f"{quick_hub.url}/api/calls", caller)
        assert status == 201
        await ops.next("call-ringing")
        for s in (ops, term):
            missed = await s.next("call-missed", timeout=10)
            assert missed["call"]["id"] == call["id"] and missed["call"]["state"] == "missed"
        status, problem = await post(http, f"{quick_hub.url}/api/calls/{call['id']}/answer", operator)
        assert status == 409 and problem["call"]["state"] == "missed"

    # The call log is durable: a restarted hub (empty live state) still lists it.
    quick_hub.stop()
    restarted = start_hub(tmp_path)
    try:
        status, listed = await get(http, f"{restarted.url}/api/calls", operator)
        assert status == 200
        assert [(c["id"], c["state"], c["site_name"]) for c in listed] == [(call["id"], "missed", "台子村")]
    finally:
        restarted.stop()


async def test_answers_race_across_two_hub_processes(tmp_path: Path, redis_url: str, http: aiohttp.ClientSession):
    """The same call answered on two processes at once, round after round:
    the claim in shared live state decides, so exactly one gets 200 and the
    call room, the other a 409 naming the winner, and the call log agrees."""
    rounds = 20
    roomy = {"HUB_ROOMS_PER_SITE": str(rounds + 5)}  # every answer opens a call room at the caller's site
    a = start_hub(tmp_path, "--redis", redis_url, env=roomy)
    b = start_hub(tmp_path, "--redis", redis_url, env=roomy)
    try:
        caller = a.sign("term-hongzhuang", "hongzhuang", "terminal")
        op_a = a.sign("op-ledu", "ledu", "operator")
        op_b = a.sign("op-haidong", "haidong", "operator")
        winners = []
        async with socket(http, b, op_b) as on_b:
            for _ in range(rounds):
                status, call = await post(http, f"{a.url}/api/calls", caller)
                assert status == 201, call
                assert (await on_b.next("call-ringing"))["call"]["id"] == call["id"]  # rung through Redis
                path = f"/api/calls/{call['id']}/answer"
                answers = await asyncio.gather(post(http, a.url + path, op_a), post(http, b.url + path, op_b))
                assert sorted(s for s, _ in answers) == [200, 409], answers
                (_, won), (_, lost) = sorted(answers, key=lambda answer: answer[0])
                winner = won["call"]["answered_by"]["user"]
                assert lost["call"]["state"] == "answered" and lost["call"]["answered_by"]["user"] == winner
                assert (await on_b.next("call-answered"))["answered_by"]["user"] == winner
                winners.append((call["id"], winner, won["room"]["id"]))
        status, listed = await get(http, f"{b.url}/api/calls", op_a)
        logged = {c["id"]: (c["answered_by"]["user"], c["room_id"]) for c in listed}
        assert all(logged[call_id] == (user, room) for call_id, user, room in winners)
        print("answers won by:", {u: sum(w == u for _, w, _ in winners) for u in ("op-ledu", "op-haidong")})
    finally:
        a.stop()
        b.stop()


async def test_convene_invites_admits_and_calls_the_roll(hub: HubProcess, http: aiohttp.ClientSession):
    operator = hub.token("op-ledu", "ledu", "operator")
    taizi = hub.token("term-taizi", "taizi", "terminal")
    qutancun = hub.token("term-qutancun", "qutancun", "terminal")
    hongzhuang = hub.token("term-hongzhuang", "hongzhuang", "terminal")
    convene = f"{hub.url}/api/conferences"
    async with (
        socket(http, hub, operator) as ops,
        socket(http, hub, taizi) as at_taizi,
        socket(http, hub, qutancun) as at_qutancun,
        socket(http, hub, hongzhuang) as at_hongzhuang,
    ):
        # Bad input and refusals open no room.
        _, before = await get(http, f"{hub.url}/api/rooms", operator)
        for token, body, expected in [
            (operator, {"title": "x", "sites": "taizi"}, 400),
            (operator, {"title": "x", "sites": []}, 400),
            (operator, {"title": 3, "sites": ["taizi"]}, 400),
            (operator, {"title": "x", "sites": ["taizi", "minkang"]}, 403),  # another county's village
            (operator, {"title": "x", "sites": ["nowhere"]}, 404),
            (taizi, {"title": "x", "sites": ["taizi"]}, 403),  # terminals do not convene
        ]:
            status, problem = await post(http, convene, token, body)
            assert status == expected, (body, problem)
        _, after = await get(http, f"{hub.url}/api/rooms", operator)
        assert after == before

        status, room = await post(http, convene, operator, {"title": "防汛会商", "sites": ["taizi", "qutancun"]})
        assert status == 201, room
        assert room["kind"] == "conference" and room["site_id"] == "ledu" and room["admit"] == ["qutancun", "taizi"]

        # Exactly the chosen sites are invited, live.
        for s, site in ((at_taizi, "taizi"), (at_qutancun, "qutancun")):
            invitation = await s.next("invitation")
            assert invitation["room_id"] == room["id"] and invitation["site_id"] == site
            assert invitation["from"]["user"] == "op-ledu" and invitation["room"]["title"] == "防汛会商"
            assert invitation["from"]["site_name"] == "乐都区"  # above the village's tree: named for its home page
        assert await at_hongzhuang.nothing_of("invitation", 0.3)

        # The operator watches the room; a chosen site enters, the sibling beside it may not.
        assert (await ops.request({"type": "join", "room": room["id"], "watch": True}))["type"] == "joined"
        joined = await at_taizi.request({"type": "join", "room": room["id"], "name": "台子村"})
        assert joined["type"] == "joined"
        assert (await ops.next("participant-joined"))["participant"]["site_id"] == "taizi"
        assert (await at_hongzhuang.request({"type": "join", "room": room["id"]}))["code"] == "forbidden"
        status, _ = await get(http, f"{hub.url}/api/rooms/{room['id']}", hongzhuang)
        assert status == 403

        status, roll = await get(http, f"{hub.url}/api/conferences/{room['id']}/rollcall", operator)
        assert status == 200
        by_site = {s["site_id"]: s for s in roll["sites"]}
        assert set(by_site) == {"taizi", "qutancun"}
        assert by_site["taizi"]["joined"] and [p["name"] for p in by_site["taizi"]["participants"]] == ["台子村"]
        assert by_site["taizi"]["since"] == joined["participant"]["joined_at"]
        assert not by_site["qutancun"]["joined"] and by_site["qutancun"]["participants"] == []

        await at_taizi.request({"type": "leave", "room": room["id"]})
        await ops.next("participant-left")
        _, roll = await get(http, f"{hub.url}/api/conferences/{room['id']}/rollcall", operator)
        assert not any(s["joined"] for s in roll["sites"])

        # Roll calls are of conferences, for those who may enter them.
        assert (await get(http, f"{hub.url}/api/conferences/site-taizi/rollcall", operator))[0] == 404
        assert (await get(http, f"{hub.url}/api/conferences/{room['id']}/rollcall", hongzhuang))[0] == 403
