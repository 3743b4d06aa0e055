"""WHIP (RFC 9725) publishing and WHEP viewing: SDP offer in, answer out."""

from __future__ import annotations

from aiohttp import web

from hub.core.tokens import NODE_ROLE
from hub.media.layers import LayerState
from hub.media.router import check_offer

from . import models as m
from .auth import claims_of
from .doors import QUOTA, Answer, door, ok, read_body, read_query
from .keys import ROOMS, SETTINGS
from .problems import Problem
from .recordings import audit_view

SDP_TYPE = "application/sdp"
SDP_ANSWER = Answer(201, "The SDP answer; Location names the session to DELETE", media=SDP_TYPE, headers=("Location",))
ENDED = Answer(200, "Ended")


async def read_offer(request: web.Request) -> str:
    if request.content_type != SDP_TYPE:
        raise Problem(415, "Unsupported Media Type", f"send the offer as {SDP_TYPE}")
    limit = request.app[SETTINGS].max_sdp_bytes
    body = b""
    # read() returns what has arrived so far; loop to the end or the limit.
    while len(body) <= limit and (chunk := await request.content.read(limit + 1 - len(body))):
        body += chunk
    if len(body) > limit:
        raise Problem(413, "Content Too Large", f"SDP offers are limited to {limit} bytes")
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Problem(400, "Bad SDP offer", "SDP must be UTF-8 text") from exc


def sdp_created(answer: str, location: str) -> web.Response:
    return web.Response(status=201, text=answer, content_type=SDP_TYPE, headers={"Location": location})


@door(
    "Publish a stream into a room (WHIP, RFC 9725): an SDP offer in, the answer out",
    SDP_ANSWER,
    query=m.PublishQuery,
    sdp=True,
    problems=QUOTA,
    description="`participant`: attach the stream to your participant in the room (else the hub adds one)",
)
async def whip_publish(request: web.Request) -> web.Response:
    claims = claims_of(request)
    query = read_query(request, m.PublishQuery)
    room_id = request.match_info["room_id"]
    rooms = request.app[ROOMS]
    await rooms.room(claims, room_id)  # jurisdiction before reading the body
    offer = await read_offer(request)
    check_offer(offer, request.app[SETTINGS].max_sdp_bytes)
    stream, answer = await rooms.publish(
        claims,
        room_id,
        offer,
        kind=query.kind or "camera",
        participant_id=query.participant,
    )
    return sdp_created(answer, f"/whip/{room_id}/{stream['id']}")


@door("Stop publishing (WHIP)", ENDED)
async def whip_delete(request: web.Request) -> web.Response:
    claims = claims_of(request)
    await request.app[ROOMS].unpublish(claims, request.match_info["room_id"], request.match_info["stream_id"])
    return web.Response(status=200)


@door(
    "View a stream (WHEP): an SDP offer in, the answer out",
    SDP_ANSWER,
    Answer(307, "Hosted by another hub process, and redirect=1 asked to go there", headers=("Location",)),
    query=m.ViewQuery,
    sdp=True,
    problems=(*QUOTA, 502),
    description="A stream another hub process hosts is pulled to this one (a relay) and served from here;"
    " `redirect=1` asks for a 307 to the hosting process instead",
)
async def whep_view(request: web.Request) -> web.Response:
    claims = claims_of(request, node=True)
    stream_id = request.match_info["stream_id"]
    rooms = request.app[ROOMS]
    redirect = read_query(request, m.ViewQuery).redirect == "1"
    stream = await rooms.stream(claims, stream_id)
    rooms.check_viewable(stream, redirect)  # redirect before reading the body
    offer = await read_offer(request)
    check_offer(offer, request.app[SETTINGS].max_sdp_bytes)
    subscription_id, answer = await rooms.view(claims, stream_id, offer, redirect)
    if claims.role != NODE_ROLE:  # a relay's pull: its viewers are audited where they watch
        try:
            await audit_view(request, claims, stream, subscription_id)
        except BaseException:  # a view the audit log does not hold is not served
            await rooms.end_view(claims, stream_id, subscription_id)
            raise
    return sdp_created(answer, f"/whep/{stream_id}/{subscription_id}")


@door("Stop viewing (WHEP)", ENDED)
async def whep_delete(request: web.Request) -> web.Response:
    claims = claims_of(request, node=True)
    await request.app[ROOMS].end_view(claims, request.match_info["stream_id"], request.match_info["session_id"])
    return web.Response(status=200)


def layer_choice(state: LayerState | None) -> web.Response:
    if state is None:
        choice = m.LayerChoice(simulcast=False)
    else:
        choice = m.LayerChoice(
            simulcast=bool(state.layers),
            layer=state.layer,
            target=state.target,
            layers=[m.SimulcastLayer(rid=r, width=w, height=h, bitrate=b) for r, w, h, b in state.layers],
            estimate=state.estimate,
            switches=state.switches,
            temporal=state.temporal,
        )
    return web.json_response(choice.model_dump())


@door(
    "State the size a viewer renders a stream at: it chooses the simulcast layer (WHEP session)",
    ok(m.LayerChoice),
    body=m.TileSize,
    description="0×0 means the tile is hidden: no video until a size comes again. See docs/protocol.md",
)
async def whep_tile(request: web.Request) -> web.Response:
    claims = claims_of(request)
    body = await read_body(request, m.TileSize)
    state = await request.app[ROOMS].set_tile(
        claims, request.match_info["stream_id"], request.match_info["session_id"], body.width, body.height
    )
    return layer_choice(state)


@door("Which simulcast layer a viewing session receives (WHEP session)", ok(m.LayerChoice))
async def whep_layer(request: web.Request) -> web.Response:
    claims = claims_of(request)
    state = await request.app[ROOMS].layer(claims, request.match_info["stream_id"], request.match_info["session_id"])
    return layer_choice(state)
