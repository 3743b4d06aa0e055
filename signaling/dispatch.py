"""Emergency calls and convening over HTTP (the domain is hub/workflows/dispatch.py).

A call that someone else answered first, or that already ended, is a 409
problem whose `call` member says how it ended and who answered.
"""

from __future__ import annotations

import json

from aiohttp import web

from hub.workflows.dispatch import CallConflict, Dispatch

from .api import json_response
from .auth import claims_of
from .problems import PROBLEM_TYPE, Problem, read_json_object, service

DISPATCH = web.AppKey("dispatch", Dispatch)
MAX_NOTE = 200
MAX_TITLE = 100


def _dispatch(request: web.Request) -> Dispatch:
    return service(request, DISPATCH, "this hub process does not dispatch calls")


def _conflict(request: web.Request, exc: CallConflict) -> web.Response:
    """A 409 problem carrying the call as an extension member (RFC 9457 §3.2)."""
    body = {"type": "about:blank", "title": "Conflict", "status": 409, "detail": str(exc)}
    body |= {"instance": request.path, "call": exc.call}
    return web.Response(status=409, text=json.dumps(body, ensure_ascii=False), content_type=PROBLEM_TYPE)


def _text(body: dict[str, object], key: str, limit: int) -> str:
    value = body.get(key, "")
    if not isinstance(value, str) or len(value) > limit:
        raise Problem(400, "Bad Request", f"{key}: expected a string of at most {limit} characters")
    return value.strip()


async def list_calls(request: web.Request) -> web.Response:
    claims = claims_of(request)
    return json_response(await _dispatch(request).calls(claims))


async def create_call(request: web.Request) -> web.Response:
    claims = claims_of(request)
    dispatch = _dispatch(request)
    body = await read_json_object(request, '{"note": "..."} (optional)') if request.body_exists else {}
    note = _text(body, "note", MAX_NOTE)
    try:
        return json_response(await dispatch.call(claims, note), status=201)
    except CallConflict as exc:
        return _conflict(request, exc)


async def answer_call(request: web.Request) -> web.Response:
    claims = claims_of(request)
    try:
        call, room = await _dispatch(request).answer(claims, request.match_info["call_id"])
    except CallConflict as exc:
        return _conflict(request, exc)
    return json_response({"call": call, "room": room})


async def cancel_call(request: web.Request) -> web.Response:
    claims = claims_of(request)
    try:
        return json_response(await _dispatch(request).cancel(claims, request.match_info["call_id"]))
    except CallConflict as exc:
        return _conflict(request, exc)


async def convene(request: web.Request) -> web.Response:
    claims = claims_of(request)
    dispatch = _dispatch(request)
    body = await read_json_object(request, '{"title": "...", "sites": ["site id", ...]}')
    title = _text(body, "title", MAX_TITLE)
    sites = body.get("sites")
    if not isinstance(sites, list) or not all(isinstance(s, str) and 0 < len(s) <= 100 for s in sites):
        raise Problem(400, "Bad Request", "sites: expected a list of site ids")
    return json_response(await dispatch.convene(claims, title, sites), status=201)


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
