"""Cameras over HTTP: register, list (with live status), read, remove.
Jurisdiction and roles are checked by hub.workflows.cameras.Cameras."""

from __future__ import annotations

from aiohttp import web

from hub.workflows.cameras import Cameras

from . import models as m
from .api import json_response
from .auth import claims_of
from .doors import Answer, created, door, ok, read_body, read_query
from .problems import service

CAMERAS = web.AppKey("cameras", Cameras)
#: A hub process may run without pulling cameras: 503.
FEATURE = (503,)


def _cameras(request: web.Request) -> Cameras:
    return service(request, CAMERAS, "this hub process does not pull cameras")


@door(
    "Register a camera (admins, operators); the hub starts pulling it",
    created(m.Camera),
    body=m.NewCamera,
    problems=FEATURE,
    description="url: rtsp, rtsps, http, https, or a file inside the media folders (docs/operate.md)",
)
async def create_camera(request: web.Request) -> web.Response:
    claims = claims_of(request)
    body = await read_body(request, m.NewCamera)
    entry = body.model_dump(exclude_none=True)
    return json_response(await _cameras(request).register(claims, entry), status=201)


@door(
    "Cameras of the caller's jurisdiction (of one branch with `site`), with live status",
    ok(list[m.Camera]),
    query=m.BranchQuery,
    problems=FEATURE,
)
async def list_cameras(request: web.Request) -> web.Response:
    claims = claims_of(request)
    site = read_query(request, m.BranchQuery).site
    return json_response(await _cameras(request).cameras(claims, site))


@door("One camera with its live status", ok(m.Camera), problems=FEATURE)
async def get_camera(request: web.Request) -> web.Response:
    claims = claims_of(request)
    return json_response(await _cameras(request).camera(claims, request.match_info["camera_id"]))


@door("Remove a camera (admins, operators)", Answer(204, "Removed"), problems=FEATURE)
async def delete_camera(request: web.Request) -> web.Response:
    claims = claims_of(request)
    await _cameras(request).remove(claims, request.match_info["camera_id"])
    return web.Response(status=204)


def add_routes(app: web.Application, cameras: Cameras | None) -> None:
    if cameras is not None:
        app[CAMERAS] = cameras
    app.router.add_get("/api/cameras", list_cameras)
    app.router.add_post("/api/cameras", create_camera)
    app.router.add_get("/api/cameras/{camera_id}", get_camera)
    app.router.add_delete("/api/cameras/{camera_id}", delete_camera)
