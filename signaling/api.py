"""The REST API: who am I, the site tree, rooms and streams, health."""

from __future__ import annotations

import json
import time

from aiohttp import web

from hub.core.access import require_site, room_bound
from hub.core.livestate import Unavailable
from hub.core.rooms import NotFound
from hub.core.sites import Site, SiteTree
from hub.media.turn import mint

from . import models as m
from .auth import claims_of
from .doors import QUOTA, created, door, ok, read_body, read_query
from .keys import LAG, ROOMS, SETTINGS


def json_response(data: object, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=lambda d: json.dumps(d, ensure_ascii=False))


@door("The caller's identity and home site", ok(m.Me))
async def me(request: web.Request) -> web.Response:
    claims = claims_of(request)
    tree = request.app[ROOMS].tree
    site = tree.get(claims.site)
    department = tree.department(claims.department) if claims.department else None
    return json_response(
        {
            "user": claims.user,
            "name": claims.display_name(),
            "role": claims.role,
            "site": site.to_json() if site else None,
            "room": claims.room,
            "department": department.to_json() if department else None,
        }
    )


@door(
    "STUN/TURN servers for the caller's peer connections, with TURN credentials minted for the caller",
    ok(m.IceServers),
    description="TURN REST scheme: username `<expiry>:<user>`, credential base64(HMAC-SHA1(secret, username)).",
)
async def ice_servers(request: web.Request) -> web.Response:
    claims = claims_of(request)  # who asks, whether or not there is anything to hand out
    settings = request.app[SETTINGS]
    if not settings.turn_urls or not settings.turn_secret:
        return json_response({"ice_servers": [], "expires_at": None})
    expires = int(time.time()) + settings.turn_credential_seconds
    turn = mint(settings.turn_secret, settings.turn_urls, claims.user, expires)
    return json_response({"ice_servers": [turn.ice_server()], "expires_at": expires})


@door("Sites of the caller's jurisdiction, parents first", ok(list[m.Site]))
async def list_sites(request: web.Request) -> web.Response:
    claims = claims_of(request)
    tree = request.app[ROOMS].tree
    if room_bound(claims):
        return json_response([])
    return json_response([site_json(tree, s) for s in tree.jurisdiction(claims.site)])


def site_json(tree: SiteTree, site: Site) -> dict[str, object]:
    """A site as the API lists it: with the departments beside it."""
    return site.to_json() | {"departments": [d.to_json() for d in tree.departments(site.id)]}


@door(
    "Departments a room or case of a site may call in: beside it and beside the sites above it, nearest first",
    ok(list[m.Department]),
    query=m.BranchQuery,
)
async def list_departments(request: web.Request) -> web.Response:
    claims = claims_of(request)
    tree = request.app[ROOMS].tree
    site_id = read_query(request, m.BranchQuery).site or claims.site
    if tree.get(site_id) is None:
        raise NotFound(f"no site {site_id}")
    require_site(tree, claims, site_id)
    return json_response([d.to_json() for s in tree.ancestors(site_id) for d in tree.departments(s)])


@door("One site with its standing room and its children's ids", ok(m.SiteDetail))
async def get_site(request: web.Request) -> web.Response:
    claims = claims_of(request)
    tree = request.app[ROOMS].tree
    site_id = request.match_info["site_id"]
    site = tree.get(site_id)
    if site is None:
        raise NotFound(f"no site {site_id}")
    require_site(tree, claims, site_id)
    children = [s.id for s in tree.jurisdiction(site_id)[1:] if s.parent == site_id]
    return json_response(site.to_json() | {"children": children})


@door("Live or opened rooms in the caller's jurisdiction", ok(list[m.ListedRoom]))
async def list_rooms(request: web.Request) -> web.Response:
    claims = claims_of(request)
    return json_response(await request.app[ROOMS].rooms(claims))


@door("Open a mediation room or a conference at a site", created(m.Room), body=m.NewRoom, problems=QUOTA)
async def open_room(request: web.Request) -> web.Response:
    claims = claims_of(request)
    body = await read_body(request, m.NewRoom)
    room = await request.app[ROOMS].open_room(claims, body.site_id, body.kind, body.title)
    return json_response(room, status=201)


@door("Close an opened room (its opener, or an operator above it); its streams end", ok(m.Room))
async def close_room(request: web.Request) -> web.Response:
    claims = claims_of(request)
    return json_response(await request.app[ROOMS].close_room(claims, request.match_info["room_id"]))


@door("A room with its participants and streams", ok(m.RoomDetail))
async def get_room(request: web.Request) -> web.Response:
    claims = claims_of(request)
    return json_response(await request.app[ROOMS].room_detail(claims, request.match_info["room_id"]))


@door("One live stream", ok(m.Stream))
async def get_stream(request: web.Request) -> web.Response:
    claims = claims_of(request)
    return json_response(await request.app[ROOMS].stream(claims, request.match_info["stream_id"]))


@door("Liveness of this hub process", ok(m.Health), public=True)
async def health(request: web.Request) -> web.Response:
    """Liveness: this process runs and forwards media. Never asks Redis, so an
    outage of shared live state does not get healthy processes restarted."""
    rooms = request.app[ROOMS]
    return json_response(
        {
            "status": "ok",
            "node": rooms.node_id,
            "live_state": "up" if rooms.state.available else "down",
            **rooms.media_counts(),
        }
        | (
            {"loop_lag_max_ms": round(probe.max_ms, 1), "loop_lag_wall_max_ms": round(probe.wall_max_ms, 1)}
            if (probe := request.app.get(LAG))
            else {}
        )
    )


@door(
    "Readiness: shared live state (Redis) answers and holds this process's records",
    ok(m.Ready),
    public=True,
    problems=(503,),
)
async def ready(request: web.Request) -> web.Response:
    """Readiness: this process can take requests that need shared live state
    (it answers now, and holds this process's records again after an outage)."""
    rooms = request.app[ROOMS]
    await rooms.state.check()  # Unavailable: a 503 problem
    if not rooms.state.available:
        raise Unavailable("shared live state is back; this process is re-registering what it hosts")
    return json_response({"status": "ready", "node": rooms.node_id})
