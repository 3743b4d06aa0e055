"""The console over HTTP: the page, live status of a branch, wall layouts."""

from __future__ import annotations

from aiohttp import web

from hub.monitoring.console import Console, Layouts
from hub.monitoring.presence import Presence

from . import models as m
from .api import json_response
from .auth import claims_of
from .doors import door, ok, read_body, read_query
from .keys import EVENT_INDEX, ROOMS
from .pages import page
from .problems import service

CONSOLE = web.AppKey("console", Console)
PRESENCE = web.AppKey("presence", Presence)
#: A hub process may run without the console: 503.
FEATURE = (503,)


class LayoutsBody(Layouts, m.Body):
    """The wall layouts (hub.monitoring.console.Layouts) as a request body."""


def _console(request: web.Request) -> Console:
    return service(request, CONSOLE, "this hub process has no console")


@door(
    "Live status of a branch (default: the caller's home site): sites online, rooms, streams, cameras,"
    " roll-ups; compact=1: only live sites, for a console kept by deltas",
    ok(m.ConsoleStatus),
    query=m.ConsoleQuery,
    problems=FEATURE,
)
async def status(request: web.Request) -> web.Response:
    """The branch's status, with the event sequence number it reflects: the
    console applies only events numbered after it (docs/protocol.md)."""
    claims = claims_of(request)
    query = read_query(request, m.ConsoleQuery)
    # Read before the state: an event numbered after `seq` may or may not be
    # in the status, and the console's deltas are idempotent for that.
    seq = request.app[EVENT_INDEX].seq
    body = await _console(request).status(claims, query.site, query.compact == "1")
    return json_response(body | {"seq": seq, "node": request.app[ROOMS].node_id})


@door(
    "One branch of the tree, for a console of a big one: the site (default: the caller's home site) and its"
    " children, each with its branch's counts; a console loads its root's, then each branch it opens",
    ok(m.ConsoleBranch),
    query=m.BranchQuery,
    problems=FEATURE,
)
async def branch(request: web.Request) -> web.Response:
    claims = claims_of(request)
    query = read_query(request, m.BranchQuery)
    seq = request.app[EVENT_INDEX].seq  # read before the state, as for the status
    body = await _console(request).branch(claims, query.site)
    return json_response(body | {"seq": seq, "node": request.app[ROOMS].node_id})


@door("The caller's wall layouts", ok(Layouts), problems=FEATURE)
async def get_layouts(request: web.Request) -> web.Response:
    return json_response(await _console(request).get_layouts(claims_of(request)))


@door("Replace the caller's wall layouts", ok(Layouts), body=LayoutsBody, problems=FEATURE)
async def put_layouts(request: web.Request) -> web.Response:
    claims = claims_of(request)
    body = await read_body(request, LayoutsBody)
    return json_response(await _console(request).put_layouts(claims, body.model_dump(exclude_none=True)))


def add_routes(app: web.Application, console: Console | None, presence: Presence | None) -> None:
    if presence is not None:
        app[PRESENCE] = presence
    if console is not None:
        app[CONSOLE] = console
    app.router.add_get("/console", page("console.html", "The console page"))
    app.router.add_get("/api/console/status", status)
    app.router.add_get("/api/console/branch", branch)
    app.router.add_get("/api/console/layouts", get_layouts)
    app.router.add_put("/api/console/layouts", put_layouts)
