"""Monitoring over HTTP: stream snapshots and video health alerts.

Any hub process serves them from live state, whichever process took them.
Jurisdiction: a stream's snapshot is visible to whoever may see the stream
(its room); listings cover a branch of the tree the caller reaches.
"""

from __future__ import annotations

from email.utils import formatdate

from aiohttp import web

from hub.core.access import require_site
from hub.core.rooms import NotFound
from hub.core.tokens import Claims
from hub.monitoring.snapshots import Snapshots

from . import models as m
from .api import json_response
from .auth import claims_of
from .doors import Answer, door, ok, read_query
from .keys import ROOMS
from .problems import service
from .recordings import audit_snapshot

SNAPSHOTS = web.AppKey("snapshots", Snapshots)
#: A hub process may run without snapshots: 503.
FEATURE = (503,)


def _snapshots(request: web.Request) -> Snapshots:
    return service(request, SNAPSHOTS, "this hub process takes no snapshots")


def _branch(request: web.Request, claims: Claims) -> str:
    """The `site` query parameter (default: the caller's home site), if the caller reaches it."""
    tree = request.app[ROOMS].tree
    site = read_query(request, m.BranchQuery).site or claims.site
    if tree.get(site) is None:
        raise NotFound(f"no site {site}")
    require_site(tree, claims, site)
    return site


@door(
    "The latest snapshot of a stream (JPEG); send If-None-Match with its ETag",
    Answer(200, "JPEG", media="image/jpeg", headers=("ETag", "Cache-Control", "Last-Modified")),
    Answer(304, "Not modified since the ETag", headers=("ETag",)),
    problems=FEATURE,
)
async def snapshot(request: web.Request) -> web.Response:
    claims = claims_of(request)
    stream_id = request.match_info["stream_id"]
    stream = await request.app[ROOMS].stream(claims, stream_id)  # NotFound / Forbidden
    latest = await _snapshots(request).latest(stream_id)
    if latest is None:
        raise NotFound(f"stream {stream_id} has no snapshot yet")
    at, jpeg = latest
    etag = f'"{stream_id}-{round(at * 1000)}"'
    # no-cache: a browser may keep the picture but must ask each time; the
    # ETag makes that ask cheap when no newer snapshot was taken.
    headers = {"ETag": etag, "Cache-Control": "no-cache", "Last-Modified": formatdate(at, usegmt=True)}
    if etag in request.headers.get("If-None-Match", ""):
        return web.Response(status=304, headers=headers)  # a picture the caller already has: no new view
    await audit_snapshot(request, claims, stream)
    return web.Response(body=jpeg, content_type="image/jpeg", headers=headers)


@door("Snapshots of a branch's streams", ok(list[m.Snapshot]), query=m.BranchQuery, problems=FEATURE)
async def list_snapshots(request: web.Request) -> web.Response:
    claims = claims_of(request)
    return json_response(await _snapshots(request).in_branch(_branch(request, claims)))


@door("Active video health alerts of a branch, oldest first", ok(list[m.Alert]), query=m.BranchQuery, problems=FEATURE)
async def list_alerts(request: web.Request) -> web.Response:
    claims = claims_of(request)
    return json_response(await _snapshots(request).alerts(_branch(request, claims)))


def add_routes(app: web.Application, snapshots: Snapshots | None) -> None:
    if snapshots is not None:
        app[SNAPSHOTS] = snapshots
    app.router.add_get("/api/streams/{stream_id}/snapshot", snapshot)
    app.router.add_get("/api/snapshots", list_snapshots)
    app.router.add_get("/api/alerts", list_alerts)
