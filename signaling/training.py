"""Trainings over HTTP: start, list and end a training, let an attendee
speak and return them to watching, read the attendance (JSON or CSV)."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime

from aiohttp import web

from hub.workflows.training import Trainings

from . import models as m
from .api import json_response
from .auth import claims_of
from .doors import QUOTA, Answer, created, door, ok, read_body, read_query
from .keys import ROOMS
from .pages import page
from .problems import service

TRAININGS = web.AppKey("trainings", Trainings)
#: A hub process may run without trainings: 503.
FEATURE = (503,)
CSV_COLUMNS = ("site_id", "site_name", "user", "name", "role", "joined_at", "left_at", "minutes", "interrupted")


def _trainings(request: web.Request) -> Trainings:
    return service(request, TRAININGS, "this hub process does not run trainings")


@door(
    "Start a training for a branch; its users get an `invitation` event",
    created(m.StartedTraining),
    body=m.NewTraining,
    problems=(*FEATURE, *QUOTA),
)
async def start(request: web.Request) -> web.Response:
    claims = claims_of(request)
    body = await read_body(request, m.NewTraining)
    return json_response(await _trainings(request).start_training(claims, body.title, body.branch), status=201)


@door(
    "Trainings of the caller's branch (`all=1`: ended ones too)",
    ok(list[m.ListedTraining]),
    query=m.TrainingList,
    problems=FEATURE,
)
async def listing(request: web.Request) -> web.Response:
    claims = claims_of(request)
    include_ended = read_query(request, m.TrainingList).all in ("1", "true")
    return json_response(await _trainings(request).visible(claims, include_ended))


@door("End a training", ok(m.Training), problems=FEATURE)
async def end(request: web.Request) -> web.Response:
    claims = claims_of(request)
    return json_response(await _trainings(request).end(claims, request.match_info["room_id"]))


SPEAKER = "The participant, `speaker` set (participant-updated goes to the room)"


@door("Let an attendee speak", ok(m.Participant, SPEAKER), body=m.Speaker, problems=FEATURE)
async def promote(request: web.Request) -> web.Response:
    claims = claims_of(request)
    participant_id = (await read_body(request, m.Speaker)).participant_id
    return json_response(await _trainings(request).promote(claims, request.match_info["room_id"], participant_id))


@door("Return a speaker to watching", ok(m.Participant, SPEAKER), problems=FEATURE)
async def demote(request: web.Request) -> web.Response:
    claims = claims_of(request)
    room_id, participant_id = request.match_info["room_id"], request.match_info["participant_id"]
    return json_response(await _trainings(request).demote(claims, room_id, participant_id))


@door("The sites of the training's branch, for whoever may enter it", ok(list[m.Site]), problems=FEATURE)
async def branch_sites(request: web.Request) -> web.Response:
    claims = claims_of(request)
    return json_response(await _trainings(request).branch_sites(claims, request.match_info["room_id"]))


def _iso(at: float | None) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="seconds") if at is not None else ""


@door(
    "Who attended from which site, from when to when",
    Answer(200, "JSON, or CSV with `format=csv`", m.Attendance, media="text/csv"),
    query=m.AttendanceQuery,
    problems=FEATURE,
)
async def attendance(request: web.Request) -> web.Response:
    claims = claims_of(request)
    as_csv = read_query(request, m.AttendanceQuery).format == "csv"
    room_id = request.match_info["room_id"]
    training, rows = await _trainings(request).attendance(claims, room_id)
    tree = request.app[ROOMS].tree
    rows = [row | {"site_name": getattr(tree.get(row["site_id"]), "name", "")} for row in rows]
    if not as_csv:
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
    app.router.add_get("/trainings", page("training.html", "The trainings page"))
    app.router.add_get("/api/trainings", listing)
    app.router.add_post("/api/trainings", start)
    app.router.add_post("/api/trainings/{room_id}/end", end)
    app.router.add_post("/api/trainings/{room_id}/speakers", promote)
    app.router.add_delete("/api/trainings/{room_id}/speakers/{participant_id}", demote)
    app.router.add_get("/api/trainings/{room_id}/attendance", attendance)
    app.router.add_get("/api/trainings/{room_id}/sites", branch_sites)
