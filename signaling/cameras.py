"""Cameras over HTTP: register, list (with live status), read, remove.
Jurisdiction and roles are checked by hub.workflows.cameras.Cameras."""

from __future__ import annotations

from aiohttp import web

from hub.workflows.cameras import Cameras

from .api import json_response
from .auth import claims_of
from .problems import read_json_object, service

CAMERAS = web.AppKey("cameras", Cameras)


def _cameras(request: web.Request) -> Cameras:
    return service(request, CAMERAS, "this hub process does not pull cameras")


async def create_camera(request: web.Request) -> web.Response:
    claims = claims_of(request)
    body = await read_json_object(request, '{"site_id", "name", "url"}')
    return json_response(await _cameras(request).register(claims, body), status=201)


async def list_cameras(request: web.Request) -> web.Response:
    claims = claims_of(request)
    return json_response(await _cameras(request).cameras(claims, request.query.get("site") or None))


async def get_camera(request: web.Request) -> web.Response:
    claims = claims_of(request)
    return json_response(await _cameras(request).camera(claims, request.match_info["camera_id"]))


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
