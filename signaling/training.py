"""Trainings over HTTP: start, list and end a training, let an attendee
speak and return them to watching, read the attendance (JSON or CSV)."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime

from aiohttp import web

from hub.workflows.training import Trainings

from .api import json_response
from .auth import claims_of
from .keys import ROOMS
from .pages import page
from .problems import Problem, read_json_object, service

TRAININGS = web.AppKey("trainings", Trainings)
CSV_COLUMNS = ("site_id", "site_name", "user", "name", "role", "joined_at", "left_at", "minutes", "interrupted")


def _trainings(request: web.Request) -> Trainings:
    return service(request, TRAININGS, "this hub process does not run trainings")



async def start(request: web.Request) -> web.Response:
    claims = claims_of(request)
    body = await read_json_object(request, '{"title", "branch"}')
    title, branch = body.get("title"), body.get("branch")
    if not isinstance(title, str) or not isinstance(branch, str):
        raise Problem(400, "Bad Request", 'expected {"title": string, "branch": site id}')
    return json_response(await _trainings(request).start_training(claims, title[:200], branch), status=201)


async def listing(request: web.Request) -> web.Response:
    claims = claims_of(request)
    include_ended = request.query.get("all", "") in ("1", "true")
    return json_response(await _trainings(request).visible(claims, include_ended))


async def end(request: web.Request) -> web.Response:
    claims = claims_of(request)
    return json_response(await _trainings(request).end(claims, request.match_info["room_id"]))


async def promote(request: web.Request) -> web.Response:
    claims = claims_of(request)
    body = await read_json_object(request, '{"participant_id"}')
    participant_id = body.get("participant_id")
    if not isinstance(participant_id, str) or not participant_id:
        raise Problem(400, "Bad Request", 'expected {"participant_id": string}')
    return json_response(await _trainings(request).promote(claims, request.match_info["room_id"], participant_id))


async def demote(request: web.Request) -> web.Response:
    claims = claims_of(request)
    room_id, participant_id = request.match_info["room_id"], request.match_info["participant_id"]
    return json_response(await _trainings(request).demote(claims, room_id, participant_id))


async def branch_sites(request: web.Request) -> web.Response:
    claims = claims_of(request)
    return json_response(await _trainings(request).branch_sites(claims, request.match_info["room_id"]))


def _iso(at: float | None) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="seconds") if at is not None else ""


async def attendance(request: web.Request) -> web.Response:
    claims = claims_of(request)
    room_id = request.match_info["room_id"]
    training, rows = await _trainings(request).attendance(claims, room_id)
    tree = request.app[ROOMS].tree
    rows = [row | {"site_name": getattr(tree.get(row["site_id"]), "name", "")} for row in rows]
    if request.query.get("format") != "csv":
        return json_response({"training": training, "attendance": rows})
    out = io.StringIO()
    writer = csv.DictWriter(out, CSV_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow(row | {"joined_at": _iso(row["joined_at"]), "left_at": _iso(row["left_at"])})
    return web.Response(
        # A BOM so that spreadsheet programs read the Chinese names as UTF-8.
        body=("\ufeff" + out.getvalue()).encode("utf-8"),
        content_type="text/csv",
        charset="utf-8",
        headers={"Content-Disposition": f'attachment; filename="attendance-{room_id}.csv"'},
    )


def add_routes(app: web.Application, trainings: Trainings | None) -> None:
    if trainings is not None:
        app[TRAININGS] = trainings
    app.router.add_get("/trainings", page("training.html"))
    app.router.add_get("/api/trainings", listing)
    app.router.add_post("/api/trainings", start)
    app.router.add_post("/api/trainings/{room_id}/end", end)
    app.router.add_post("/api/trainings/{room_id}/speakers", promote)
    app.router.add_delete("/api/trainings/{room_id}/speakers/{participant_id}", demote)
    app.router.add_get("/api/trainings/{room_id}/attendance", attendance)
    app.router.add_get("/api/trainings/{room_id}/sites", branch_sites)
