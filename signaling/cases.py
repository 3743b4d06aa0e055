"""Mediation cases over HTTP (hub/workflows/cases.py holds the rules).

Bodies are validated with pydantic before anything changes: a malformed one
is a 400 problem. A change the case's state does not allow is a 409. The
recordings of a case's sessions come from the recorder's catalogue, joined
here by room id (the hub does not import the recorder).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from hub.core.access import can_reach_site
from hub.core.tokens import Claims
from hub.workflows.cases import DISPUTE_TYPES, STATUSES, Cases, Conflict

from .api import json_response
from .auth import claims_of
from .keys import ROOMS
from .pages import page
from .problems import Problem, read_json_object, service
from .recordings import RECORDER

CASES = web.AppKey("cases", Cases)

Text = Annotated[str, Field(max_length=4000)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class Party(_Body):
    name: str = Field(min_length=1, max_length=64)
    role: Literal["applicant", "respondent", "other"] = "other"
    phone: str = Field(default="", max_length=32, pattern=r"^[0-9+\-() ]*$")


class NewCase(_Body):
    site_id: str | None = Field(default=None, min_length=1, max_length=100)
    title: str = Field(min_length=1, max_length=200)
    dispute_type: Literal[DISPUTE_TYPES]  # type: ignore[valid-type]
    parties: list[Party] = Field(min_length=1, max_length=20)
    summary: Text = ""


class CaseChange(_Body):
    status: Literal[STATUSES] | None = None  # type: ignore[valid-type]
    outcome: Annotated[str, Field(max_length=2000)] | None = None


class Escalation(_Body):
    note: Annotated[str, Field(max_length=1000)] = ""


M = TypeVar("M", bound=BaseModel)


async def _body(request: web.Request, model: type[M], expected: str) -> M:
    raw = await read_json_object(request, expected) if request.can_read_body else {}
    return model.model_validate(raw)  # a ValidationError is a 400 problem (problems_middleware)


def _cases(request: web.Request) -> Cases:
    return service(request, CASES, "this hub process keeps no cases")


async def _with_recordings(request: web.Request, claims: Claims, case: dict[str, Any]) -> dict[str, Any]:
    """Each session with the recordings of its room; `playable` says whether
    the caller may open one in the player (a recording belongs to its room's
    site, so the origin village cannot play the county's session)."""
    recorder = request.app.get(RECORDER)
    rows = await recorder.catalogue.by_rooms(s["room_id"] for s in case["sessions"]) if recorder else []
    tree = request.app[ROOMS].tree
    sessions = []
    for session in case["sessions"]:
        recordings = [
            r | {"playable": can_reach_site(tree, claims, r["site_id"])}
            for r in rows
            if r["room_id"] == session["room_id"]
        ]
        sessions.append(session | {"recordings": recordings})
    return case | {"sessions": sessions, "recordings": [r for s in sessions for r in s["recordings"]]}



async def open_case(request: web.Request) -> web.Response:
    claims = claims_of(request)
    body = await _body(request, NewCase, '{"title", "dispute_type", "parties": [{"name"}], "summary"}')
    case = await _cases(request).open(
        claims,
        body.site_id or claims.site,
        body.title,
        body.dispute_type,
        [p.model_dump() for p in body.parties],
        body.summary,
    )
    return json_response(case, status=201)


async def list_cases(request: web.Request) -> web.Response:
    claims = claims_of(request)
    queue = request.query.get("queue") or None
    if queue not in (None, "mine"):
        raise Problem(400, "Bad Request", "queue: expected 'mine' or nothing")
    cases = _cases(request)
    rows = await cases.search(
        claims, site=request.query.get("site") or None, status=request.query.get("status") or None, mine=bool(queue)
    )
    return json_response([row | {"sites": cases.sites_of(row)} for row in rows])


async def get_case(request: web.Request) -> web.Response:
    claims = claims_of(request)
    case = await _cases(request).get(claims, request.match_info["case_id"])
    return json_response(await _with_recordings(request, claims, case))


async def change_case(request: web.Request) -> web.Response:
    claims = claims_of(request)
    body = await _body(request, CaseChange, '{"status"?, "outcome"?}')
    if body.status is None and body.outcome is None:
        raise Problem(400, "Bad Request", 'expected {"status"?, "outcome"?} with at least one')
    try:
        case = await _cases(request).update(claims, request.match_info["case_id"], body.status, body.outcome)
    except Conflict as exc:
        raise Problem(409, "Conflict", str(exc)) from exc
    return json_response(case)


async def hold_session(request: web.Request) -> web.Response:
    claims = claims_of(request)
    try:
        session, room = await _cases(request).hold_session(claims, request.match_info["case_id"])
    except Conflict as exc:
        raise Problem(409, "Conflict", str(exc)) from exc
    return json_response(session | {"room": room}, status=201)


async def escalate(request: web.Request) -> web.Response:
    claims = claims_of(request)
    body = await _body(request, Escalation, '{"note"}')
    try:
        case = await _cases(request).escalate(claims, request.match_info["case_id"], body.note)
    except Conflict as exc:
        raise Problem(409, "Conflict", str(exc)) from exc
    return json_response(case)


def add_routes(app: web.Application, cases: Cases | None) -> None:
    if cases is not None:
        app[CASES] = cases
    app.router.add_get("/cases", page("cases.html"))
    app.router.add_get("/api/cases", list_cases)
    app.router.add_post("/api/cases", open_case)
    app.router.add_get("/api/cases/{case_id}", get_case)
    app.router.add_patch("/api/cases/{case_id}", change_case)
    app.router.add_post("/api/cases/{case_id}/sessions", hold_session)
    app.router.add_post("/api/cases/{case_id}/escalate", escalate)
