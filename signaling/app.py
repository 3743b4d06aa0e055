"""The aiohttp application: routes, middleware, and the hub it drives."""

from __future__ import annotations

from aiohttp import web

from hub.config import Settings
from hub.core.bus import EventIndex
from hub.core.lag import LagProbe
from hub.core.rooms import Rooms
from hub.core.store import Database
from hub.core.tokens import Keys
from hub.monitoring.console import Console
from hub.monitoring.presence import Presence
from hub.monitoring.snapshots import Snapshots
from hub.workflows.cameras import Cameras
from hub.workflows.cases import Cases
from hub.workflows.dispatch import Dispatch
from hub.workflows.training import Trainings
from recorder.service import Recorder

from . import (
    api,
    cameras,
    cases,
    console,
    dispatch,
    events,
    invites,
    metrics,
    monitoring,
    recordings,
    stats,
    training,
    whip,
)
from .doors import Answer, door, ok
from .heartbeat import Heartbeat
from .keys import DATABASE, EVENT_INDEX, EVENT_SOCKETS, HEARTBEAT, KEYS, LAG, ROOMS, SETTINGS
from .openapi import document
from .pacing import Pacer, pacing_middleware
from .pages import page, web_file
from .problems import problems_middleware, quiet_malformed_requests

#: The API document, built once: the route table is frozen when the application starts.
DOCUMENT = web.AppKey("openapi", dict)

# signaling/events.py is the event protocol's own module (docs/protocol.md); its door is described here.
door(
    "The event WebSocket (docs/protocol.md): roster, streams, chat, calls, alerts",
    Answer(101, "Switching Protocols"),
    problems=(400,),
    description="Without an Upgrade: websocket request: 400.",
)(events.websocket)


@door("This document", ok(dict), public=True)
async def openapi(request: web.Request) -> web.Response:
    if DOCUMENT not in request.app:
        request.app[DOCUMENT] = document(request.app)
    return web.json_response(request.app[DOCUMENT])


def make_app(
    rooms: Rooms,
    settings: Settings,
    keys: Keys,
    recorder: Recorder | None = None,
    *,
    console_service: Console | None = None,
    presence: Presence | None = None,
    dispatch_service: Dispatch | None = None,
    training_service: Trainings | None = None,
    cases_service: Cases | None = None,
    snapshots: Snapshots | None = None,
    camera_service: Cameras | None = None,
    database: Database | None = None,
    lag_probe: LagProbe | None = None,
) -> web.Application:
    quiet_malformed_requests()
    app = web.Application(
        middlewares=[pacing_middleware(Pacer()), problems_middleware], client_max_size=settings.max_sdp_bytes * 2
    )
    app[ROOMS] = rooms
    index = app[EVENT_INDEX] = EventIndex(rooms.state, rooms.tree)

    async def close_index(_: web.Application) -> None:
        index.close()

    app.on_cleanup.append(close_index)
    app[SETTINGS] = settings
    app[KEYS] = keys
    if database is not None:
        app[DATABASE] = database
    if lag_probe is not None:
        app[LAG] = lag_probe
    app[EVENT_SOCKETS] = set()
    heartbeat = app[HEARTBEAT] = Heartbeat(settings.ws_heartbeat_seconds)

    async def start_heartbeat(_: web.Application) -> None:
        heartbeat.start()

    async def stop_heartbeat(_: web.Application) -> None:
        await heartbeat.stop()

    app.on_startup.append(start_heartbeat)
    app.on_cleanup.append(stop_heartbeat)
    app.router.add_get("/healthz", api.health)
    app.router.add_get("/readyz", api.ready)
    app.router.add_get("/api/openapi.json", openapi)
    app.router.add_get("/api/me", api.me)
    app.router.add_get("/api/ice-servers", api.ice_servers)
    app.router.add_get("/api/sites", api.list_sites)
    app.router.add_get("/api/sites/{site_id}", api.get_site)
    app.router.add_get("/api/departments", api.list_departments)
    app.router.add_get("/api/rooms", api.list_rooms)
    app.router.add_post("/api/rooms", api.open_room)
    app.router.add_get("/api/rooms/{room_id}", api.get_room)
    app.router.add_delete("/api/rooms/{room_id}", api.close_room)
    app.router.add_post("/api/rooms/{room_id}/invites", invites.create_invite)
    app.router.add_get("/api/rooms/{room_id}/sites", invites.room_sites)
    app.router.add_get("/api/streams/{stream_id}", api.get_stream)
    recordings.add_routes(app, recorder)
    console.add_routes(app, console_service, presence)
    dispatch.add_routes(app, dispatch_service)
    training.add_routes(app, training_service)
    cases.add_routes(app, cases_service)
    monitoring.add_routes(app, snapshots)
    cameras.add_routes(app, camera_service)
    stats.add_routes(app)
    metrics.add_routes(app)
    app.router.add_post("/whip/{room_id}", whip.whip_publish)
    app.router.add_delete("/whip/{room_id}/{stream_id}", whip.whip_delete)
    app.router.add_post("/whep/{stream_id}", whip.whep_view)
    app.router.add_delete("/whep/{stream_id}/{session_id}", whip.whep_delete)
    app.router.add_patch("/whep/{stream_id}/{session_id}", whip.whep_tile)
    app.router.add_get("/whep/{stream_id}/{session_id}", whip.whep_layer)
    app.router.add_get("/ws", events.websocket)
    app.router.add_get("/", page("index.html", "The web app's home page"))
    app.router.add_get("/rooms/{room_id}", page("room.html", "The room page; ?token= signs in, &autojoin=1 joins"))
    app.router.add_get("/web/{path:.+}", web_file)
    return app
