"""Emergency calls and convening over HTTP (the domain is hub/workflows/dispatch.py).

A call that someone else answered first, or that already ended, is a 409
problem whose `call` member says how it ended and who answered.
"""

from __future__ import annotations

from aiohttp import web

from hub.workflows.dispatch import CallConflict, Dispatch

from . import models as m
from .api import json_response
from .auth import claims_of
from .doors import QUOTA, created, door, ok, read_body
from .problems import problem_response, service

DISPATCH = web.AppKey("dispatch", Dispatch)
#: A hub process may run without dispatch: 503. A call someone else
#: answered or that ended is a 409 carrying the call (CallConflict).
FEATURE = (503,)
CONFLICT = (409, 503)


def _dispatch(request: web.Request) -> Dispatch:
    return service(request, DISPATCH, "this hub process does not dispatch calls")


def _conflict(request: web.Request, exc: CallConflict) -> web.Response:
    """A 409 problem carrying the call as an extension member."""
    return problem_response(409, "Conflict", str(exc), request.path, members={"call": exc.call})


@door("Ringing and recent emergency calls the caller answers", ok(list[m.Call]), problems=FEATURE)
async def list_calls(request: web.Request) -> web.Response:
    claims = claims_of(request)
    return json_response(await _dispatch(request).calls(claims))


@door(
    "Call for help from the caller's home site (the body is optional)",
    created(m.Call),
    body=m.NewCall,
    body_optional=True,
    problems=CONFLICT,
    conflict=m.CallConflict,
)
async def create_call(request: web.Request) -> web.Response:
    claims = claims_of(request)
    dispatch = _dispatch(request)
    note = (await read_body(request, m.NewCall)).note
    try:
        return json_response(await dispatch.call(claims, note), status=201)
    except CallConflict as exc:
        return _conflict(request, exc)


@door("Answer a call; the first to answer wins", ok(m.AnsweredCall), problems=CONFLICT, conflict=m.CallConflict)
async def answer_call(request: web.Request) -> web.Response:
    claims = claims_of(request)
    try:
        call, room = await _dispatch(request).answer(claims, request.match_info["call_id"])
    except CallConflict as exc:
        return _conflict(request, exc)
    return json_response({"call": call, "room": room})


@door("The caller cancels a ringing call", ok(m.Call), problems=CONFLICT, conflict=m.CallConflict)
async def cancel_call(request: web.Request) -> web.Response:
    claims = claims_of(request)
    try:
        return json_response(await _dispatch(request).cancel(claims, request.match_info["call_id"]))
    except CallConflict as exc:
        return _conflict(request, exc)


@door(
    "Convene sites into a conference at the caller's home site; each site is invited live",
    created(m.Room),
    body=m.NewConference,
    problems=(*FEATURE, *QUOTA),
)
async def convene(request: web.Request) -> web.Response:
    claims = claims_of(request)
    dispatch = _dispatch(request)
    body = await read_body(request, m.NewConference)
    return json_response(await dispatch.convene(claims, body.title, body.sites), status=201)


@door("Who of each convened site has joined, since when", ok(m.Rollcall), problems=FEATURE)
async def rollcall(request: web.Request) -> web.Response:
    claims = claims_of(request)
    return json_response(await _dispatch(request).rollcall(claims, request.match_info["room_id"]))


def add_routes(app: web.Application, dispatch: Dispatch | None) -> None:
    if dispatch is not None:
        app[DISPATCH] = dispatch
    app.router.add_get("/api/calls", list_calls)
    app.router.add_post("/api/calls", create_call)
    app.router.add_post("/api/calls/{call_id}/answer", answer_call)
    app.router.add_delete("/api/calls/{call_id}", cancel_call)
    app.router.add_post("/api/conferences", convene)
    app.router.add_get("/api/conferences/{room_id}/rollcall", rollcall)
