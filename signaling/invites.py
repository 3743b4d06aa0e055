"""Guest invite links: a token that opens one room until it expires, and
the sites a room may call in."""

from __future__ import annotations

import secrets
import time

from aiohttp import web

from hub.core.access import Forbidden
from hub.core.tokens import Claims, issue

from . import models as m
from .api import json_response, site_json
from .auth import claims_of
from .doors import created, door, ok, read_body
from .keys import KEYS, ROOMS


@door("A guest invite link for the room, valid 1800, 7200 or 86400 s", created(m.Invite), body=m.NewInvite)
async def create_invite(request: web.Request) -> web.Response:
    claims = claims_of(request)
    room_id = request.match_info["room_id"]
    if claims.role == "guest":
        raise Forbidden("guests cannot invite")
    room = await request.app[ROOMS].room(claims, room_id)  # jurisdiction before reading the body
    ttl = (await read_body(request, m.NewInvite)).ttl
    # Each link is its own guest user, so its streams and roster entries are told apart.
    guest = Claims(user=f"guest-{secrets.token_hex(4)}", site=room["site_id"], role="guest", room=room_id)
    token = issue(request.app[KEYS], guest, ttl)
    return json_response(
        {"url": f"/rooms/{room_id}?token={token}", "token": token, "expires_at": int(time.time()) + ttl}, status=201
    )


@door("The room's site and the sites above it, nearest first, with their departments", ok(list[m.Site]))
async def room_sites(request: web.Request) -> web.Response:
    """The room's site and the sites above it, nearest first: the names a
    participant's site may have, and the sites and departments that may be invited."""
    claims = claims_of(request)
    rooms = request.app[ROOMS]
    room = await rooms.room(claims, request.match_info["room_id"])
    site = rooms.tree.get(room["site_id"])
    chain = ([site] if site else []) + rooms.sites_above(room["site_id"])
    return json_response([site_json(rooms.tree, s) for s in chain])
