"""Mediation cases over HTTP (hub/workflows/cases.py holds the rules).

Bodies are validated with pydantic before anything changes: a malformed one
is a 400 problem. A change the case's state does not allow is a 409. The
recordings of a case's sessions come from the recorder's catalogue, joined
here by room id (the hub does not import the recorder).
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

from aiohttp import web

from hub.core.access import can_reach_recording
from hub.core.tokens import Claims
from hub.workflows.cases import Cases, Conflict

from . import models as m
from .api import json_response
from .auth import claims_of
from .doors import QUOTA, created, door, ok, read_body, read_query
from .keys import CASES, ROOMS
from .pages import page
from .problems import Problem, problem_response, service
from .recordings import RECORDER, granted_rooms

#: A hub process may run without cases: 503.
FEATURE = (503,)
#: A change the case's state does not allow.
CONFLICT = (409, 503)


async def _changed(request: web.Request, change: Awaitable[Any], status: int = 200) -> web.Response:
    """What a change of a case returns, or a 409 problem if its state does not allow it; one
    refused for being stale carries the case as it is now."""
    try:
        result = await change
    except Conflict as exc:
        members = {"case": exc.case} if exc.case is not None else None
        return problem_response(409, "Conflict", str(exc), request.path, members=members)
    return json_response(result, status=status)


def _cases(request: web.Request) -> Cases:
    return service(request, CASES, "this hub process keeps no cases")


async def _with_recordings(request: web.Request, claims: Claims, case: dict[str, Any]) -> dict[str, Any]:
    """Each session with the recordings of its room; `playable` says whether
    the caller may open one in the player (a recording belongs to its room's
    site, so the origin village cannot play the county's session)."""
    recorder = request.app.get(RECORDER)
    rows = await recorder.catalogue.by_rooms(s["room_id"] for s in case["sessions"]) if recorder else []
    tree = request.app[ROOMS].tree
    granted = await granted_rooms(request, claims)
    sessions = []
    for session in case["sessions"]:
        recordings = [
            r | {"playable": can_reach_recording(tree, claims, r, granted)}
            for r in rows
            if r["room_id"] == session["room_id"]
        ]
        sessions.append(session | {"recordings": recordings})
    return case | {"sessions": sessions, "recordings": [r for s in sessions for r in s["recordings"]]}


@door("Open a mediation case (default: at the caller's home site)", created(m.Case), body=m.NewCase, problems=FEATURE)
async def open_case(request: web.Request) -> web.Response:
    claims = claims_of(request)
    body = await read_body(request, m.NewCase)
    case = await _cases(request).open(
        claims,
        body.site_id or claims.site,
        body.title,
        body.dispute_type,
        [p.model_dump() for p in body.parties],
        body.summary,
    )
    return json_response(case, status=201)


@door(
    "Cases that have been in a branch",
    ok(list[m.ListedCase]),
    query=m.CaseSearch,
    problems=FEATURE,
    description="`queue=mine`: only cases now at the caller's own site",
)
async def list_cases(request: web.Request) -> web.Response:
    claims = claims_of(request)
    query = read_query(request, m.CaseSearch)
    cases = _cases(request)
    rows = await cases.search(claims, site=query.site, status=query.status, mine=query.queue == "mine")
    return json_response([row | {"sites": cases.sites_of(row)} for row in rows])


@door("A case with its history, sessions, recordings and what the caller may do", ok(m.CaseDetail), problems=FEATURE)
async def get_case(request: web.Request) -> web.Response:
    claims = claims_of(request)
    case = await _cases(request).get(claims, request.match_info["case_id"])
    return json_response(await _with_recordings(request, claims, case))


@door(
    "Change a case's status or outcome",
    ok(m.Case),
    body=m.CaseChange,
    problems=CONFLICT,
    conflict=m.CaseConflict,
    description="`version`: change it only if it is still at that version (else 409 with the case as it is)",
)
async def change_case(request: web.Request) -> web.Response:
    claims = claims_of(request)
    body = await read_body(request, m.CaseChange)
    if body.status is None and body.outcome is None:
        raise Problem(400, "Bad Request", 'expected {"status"?, "outcome"?, "version"?} with a status or an outcome')
    return await _changed(
        request, _cases(request).update(claims, request.match_info["case_id"], body.status, body.outcome, body.version)
    )


@door(
    "Hold a session: open a mediation room for the case",
    created(m.CaseSession),
    problems=(*CONFLICT, *QUOTA),
    conflict=m.CaseConflict,
)
async def hold_session(request: web.Request) -> web.Response:
    cases, case_id = _cases(request), request.match_info["case_id"]

    async def hold() -> dict[str, Any]:
        session, room = await cases.hold_session(claims_of(request), case_id)
        return session | {"room": room}

    return await _changed(request, hold(), status=201)


@door(
    "Escalate a case to the parent site (the body is optional)",
    ok(m.Case),
    body=m.Escalation,
    body_optional=True,
    problems=CONFLICT,
    conflict=m.CaseConflict,
    description="`version`: escalate it only if it is still at that version (else 409 with the case as it is)",
)
async def escalate(request: web.Request) -> web.Response:
    claims = claims_of(request)
    body = await read_body(request, m.Escalation)
    return await _changed(
        request, _cases(request).escalate(claims, request.match_info["case_id"], body.note, body.version)
    )


@door(
    "Refer a case to a department beside its site or a site above it",
    created(m.Referral),
    body=m.NewReferral,
    problems=CONFLICT,
    conflict=m.CaseConflict,
    description="The department's people then read the case and enter its session rooms, and answer once",
)
async def refer(request: web.Request) -> web.Response:
    claims = claims_of(request)
    body = await read_body(request, m.NewReferral)
    case_id = request.match_info["case_id"]
    referral = _cases(request).refer(claims, case_id, body.department_id, body.ask, body.note, body.version)
    return await _changed(request, referral, status=201)


@door(
    "A department's answer to a referral of a case (once)",
    ok(m.Referral),
    body=m.ReferralAnswer,
    problems=CONFLICT,
    conflict=m.CaseConflict,
)
async def answer_referral(request: web.Request) -> web.Response:
    claims = claims_of(request)
    body = await read_body(request, m.ReferralAnswer)
    match = request.match_info
    return await _changed(
        request,
        _cases(request).answer(
            claims, match["case_id"], match["referral_id"], body.decision, body.outcome, body.document_no
        ),
    )


def add_routes(app: web.Application, cases: Cases | None) -> None:
    if cases is not None:
        app[CASES] = cases
    app.router.add_get("/cases", page("cases.html", "The cases page"))
    app.router.add_get("/api/cases", list_cases)
    app.router.add_post("/api/cases", open_case)
    app.router.add_get("/api/cases/{case_id}", get_case)
    app.router.add_patch("/api/cases/{case_id}", change_case)
    app.router.add_post("/api/cases/{case_id}/sessions", hold_session)
    app.router.add_post("/api/cases/{case_id}/escalate", escalate)
    app.router.add_post("/api/cases/{case_id}/referrals", refer)
    app.router.add_post("/api/cases/{case_id}/referrals/{referral_id}/answer", answer_referral)
