"""The console over HTTP: the page, live status of a branch, wall layouts."""

from __future__ import annotations

from aiohttp import web

from hub.monitoring.console import Console
from hub.monitoring.presence import Presence

from .api import json_response
from .auth import claims_of
from .pages import page
from .problems import read_json_object, service

CONSOLE = web.AppKey("console", Console)
PRESENCE = web.AppKey("presence", Presence)


def _console(request: web.Request) -> Console:
    return service(request, CONSOLE, "this hub process has no console")



async def status(request: web.Request) -> web.Response:
    claims = claims_of(request)
    return json_response(await _console(request).status(claims, request.query.get("site") or None))


async def get_layouts(request: web.Request) -> web.Response:
    return json_response(await _console(request).get_layouts(claims_of(request)))


async def put_layouts(request: web.Request) -> web.Response:
    claims = claims_of(request)
    body = await read_json_object(request, "a JSON object {layouts: [...], current}")
    return json_response(await _console(request).put_layouts(claims, body))


def add_routes(app: web.Application, console: Console | None, presence: Presence | None) -> None:
    if presence is not None:
        app[PRESENCE] = presence
    if console is not None:
        app[CONSOLE] = console
    app.router.add_get("/console", page("console.html"))
    app.router.add_get("/api/console/status", status)
    app.router.add_get("/api/console/layouts", get_layouts)
    app.router.add_put("/api/console/layouts", put_layouts)
