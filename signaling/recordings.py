"""Recordings over HTTP: start/stop, search, detail, media with ranges,
export, verify and the audit log. Every route checks the caller's token and
jurisdiction: a recording belongs to its room's site.

Each machine of a cluster keeps the files it records; any process answers
for any recording. One whose files another machine holds is asked of that
machine with the cluster credential (the same request, its answer streamed
back as it comes), after this process has checked the caller and written
the audit row. The holder trusts the asking process for both and serves
only what it holds, confined to the recording's folder."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path, PurePosixPath
from typing import Any

import aiohttp
from aiohttp import web
from yarl import URL

from hub.core.access import Forbidden, can_reach_recording, require_site, room_bound
from hub.core.records import Stream
from hub.core.rooms import NotFound
from hub.core.sites import SiteTree
from hub.core.tokens import NODE_ROLE, Claims
from recorder.export import OUTPUT, Exports
from recorder.manifest import MANIFEST, read_manifest, verify
from recorder.service import Recorder

from . import models as m
from .api import json_response
from .auth import claims_of
from .doors import Answer, door, ok, read_body, read_query
from .keys import CASES, ROOMS, SETTINGS
from .pages import page
from .problems import Problem, service

RECORDER = web.AppKey("recorder", Recorder)
#: A hub process may run without the recorder: 503.
FEATURE = (503,)
EXPORTS = web.AppKey("exports", Exports)
#: A recording held by another machine: that machine is down or failed (502),
#: or this process has no cluster credential to ask it (503).
HELD = (502, *FEATURE)
#: Headers of the caller's request the holder needs to answer it the same way.
ASKED = ("Range", "If-Range")
#: Headers of the holder's answer the caller gets.
PASSED_ON = (
    "Content-Type",
    "Content-Length",
    "Content-Range",
    "Accept-Ranges",
    "Content-Disposition",
    "Content-Encoding",
    "Last-Modified",
    "ETag",
)
CHUNK = 256 * 1024


def _recorder(request: web.Request) -> Recorder:
    return service(request, RECORDER, "this hub process does not record")


def _claims(request: web.Request) -> Claims:
    """A user's, or another hub process's asking for a recording this one holds."""
    return claims_of(request, node=True)


async def _recording(request: web.Request, claims: Claims) -> dict[str, Any]:
    """The catalogue row of the route's recording, if the caller may reach it
    (another hub process asks for a caller it has admitted)."""
    recording_id = request.match_info["recording_id"]
    row = await _recorder(request).catalogue.get(recording_id)
    if row is None:
        raise NotFound(f"no recording {recording_id}")
    if claims.role != NODE_ROLE and not can_reach_recording(
        request.app[ROOMS].tree, claims, row, await granted_rooms(request, claims)
    ):
        raise Forbidden(f"recording {recording_id} is outside your jurisdiction")
    return row


async def granted_rooms(request: web.Request, claims: Claims) -> set[str]:
    """The rooms whose recordings a department user was granted (none for anyone else)."""
    cases = request.app.get(CASES)
    return await cases.granted_rooms(claims) if cases is not None and claims.department else set()


async def _audit(request: web.Request, claims: Claims, action: str, row: dict[str, Any], detail: str = "") -> None:
    if claims.role == NODE_ROLE:
        return  # the process that asked has written the row of its caller
    await _recorder(request).catalogue.audit(claims.user, claims.role, action, row["id"], row["site_id"], detail)


def _holder(request: web.Request, claims: Claims, row: dict[str, Any]) -> str | None:
    """The URL of the machine holding the recording's files, if not this one."""
    if _recorder(request).holds(row):
        return None
    if claims.role == NODE_ROLE:
        # A node asks the holder only; passing the request on again could go round in circles.
        raise NotFound(f"recording {row['id']} is not held by this hub process")
    return str(row["node_url"])


@contextlib.asynccontextmanager
async def _from_holder(request: web.Request, row: dict[str, Any], holder: str) -> AsyncIterator[aiohttp.ClientResponse]:
    """The holder's answer to this same request, asked with the cluster
    credential; its body is left to stream on. A holder that cannot be
    reached, refuses the credential or fails is a 502 saying which."""
    cluster = request.app[ROOMS].cluster
    where = f"recording {row['id']} is held by the hub at {holder}"
    if cluster is None:
        raise Problem(
            503,
            "Service Unavailable",
            f"{where}; this process cannot fetch it: it needs the cluster's HUB_CLUSTER_SECRET"
            " (or a HUB_SHARED_MEDIA the machines share)",
        )
    # The path only: the caller's query may carry its own token, which is not the holder's business.
    url = URL(holder.rstrip("/") + request.rel_url.raw_path, encoded=True)
    headers = {name: request.headers[name] for name in ASKED if name in request.headers}
    async with contextlib.AsyncExitStack() as stack:
        try:
            response = await stack.enter_async_context(cluster.ask(request.method, url, headers))
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise Problem(502, "Bad Gateway", f"{where}, which cannot be reached: {exc or type(exc).__name__}") from exc
        if response.status in (401, 403):
            raise Problem(
                502,
                "Bad Gateway",
                f"{where}, which refused this process's cluster credential ({response.status}):"
                " do both have the same HUB_CLUSTER_SECRET?",
            )
        if response.status >= 500:
            text = (await response.text(errors="replace"))[:300]
            raise Problem(502, "Bad Gateway", f"{where}, which answered {response.status}: {text}")
        yield response


async def _pass_on(request: web.Request, response: aiohttp.ClientResponse) -> web.StreamResponse:
    """The holder's answer, streamed to the caller as it arrives: a segment
    is never held whole in memory."""
    headers = {name: response.headers[name] for name in PASSED_ON if name in response.headers}
    out = web.StreamResponse(status=response.status, headers=headers)
    await out.prepare(request)
    async for chunk in response.content.iter_chunked(CHUNK):
        await out.write(chunk)
    await out.write_eof()
    return out


async def audit_view(request: web.Request, claims: Claims, stream: Stream, subscription_id: str) -> None:
    """A WHEP view of a live stream starts; the recorder's LiveAudit writes its end."""
    if (recorder := request.app.get(RECORDER)) is not None:
        site_id = await request.app[ROOMS].site_of_stream(stream)
        await recorder.audit.view_started(claims, stream, site_id, subscription_id)


async def audit_snapshot(request: web.Request, claims: Claims, stream: Stream) -> None:
    if (recorder := request.app.get(RECORDER)) is not None:
        await recorder.audit.snapshot_fetched(claims, stream, await request.app[ROOMS].site_of_stream(stream))


def _branch(tree: SiteTree, claims: Claims, site: str | None) -> list[str]:
    """The sites of `site`'s branch (default: the caller's home), if the caller
    reaches it; a department's "branch" is itself (its own room's recordings)."""
    site = site or claims.site
    if tree.get(site) is None and tree.department(site) is None:
        raise NotFound(f"no site {site}")
    require_site(tree, claims, site)
    return [s.id for s in tree.jurisdiction(site)] or [site]


# -- recording a room ---------------------------------------------------------


@door("Start or stop recording a room", ok(m.RecordingState), body=m.RecordingSwitch, problems=FEATURE)
async def set_recording(request: web.Request) -> web.Response:
    claims = claims_of(request)
    on = (await read_body(request, m.RecordingSwitch)).on
    return json_response(await _recorder(request).set_recording(claims, request.match_info["room_id"], on))


@door("Whether a room is being recorded", ok(m.RecordingState), problems=FEATURE)
async def recording_status(request: web.Request) -> web.Response:
    claims = claims_of(request)
    return json_response(await _recorder(request).status(claims, request.match_info["room_id"]))


# -- catalogue ----------------------------------------------------------------


@door(
    "Search the recordings of a branch",
    ok(list[m.FoundRecording]),
    query=m.RecordingSearch,
    problems=FEATURE,
    description="`q`: text in the title, room, site or participant names, or a recording id",
)
async def search(request: web.Request) -> web.Response:
    claims = claims_of(request)
    query = read_query(request, m.RecordingSearch)
    tree = request.app[ROOMS].tree
    if room_bound(claims):
        raise Forbidden("a guest or room-bound token cannot search recordings")
    rows = await _recorder(request).catalogue.search(
        _branch(tree, claims, query.site),
        since=query.from_,
        until=query.to,
        kind=query.kind,
        text=query.q or None,
    )
    names = {row["site_id"]: tree.get(row["site_id"]) for row in rows}
    return json_response([row | {"site_name": getattr(names[row["site_id"]], "name", "")} for row in rows])


@door("One recording's manifest, status and end", ok(m.Manifest), problems=HELD)
async def detail(request: web.Request) -> web.StreamResponse:
    claims = _claims(request)
    row = await _recording(request, claims)
    if holder := _holder(request, claims, row):
        async with _from_holder(request, row, holder) as response:
            return await _pass_on(request, response)
    manifest = await asyncio.to_thread(read_manifest, _recorder(request).root / row["id"])
    return json_response(manifest | {"status": row["status"], "ended_at": row["ended_at"]})


def _relative(raw: str) -> PurePosixPath:
    """A path relative to a recording's folder, or a problem: no absolute paths, no `..`."""
    if not raw or "\\" in raw or "\x00" in raw:
        raise Problem(400, "Bad Request", "bad file path")
    relative = PurePosixPath(raw)
    if relative.is_absolute() or ".." in relative.parts:
        raise Problem(400, "Bad Request", "file paths are relative to the recording and may not climb out of it")
    return relative


def _safe_path(folder: Path, raw: str) -> Path:
    """A file inside `folder`, or a problem (see _relative); a link out of it is not followed."""
    path = (folder / _relative(raw)).resolve()
    if not path.is_relative_to(folder.resolve()) or not path.is_file():
        raise NotFound(f"no file {raw} in this recording")
    return path


@door(
    "A segment or the manifest of a recording, with HTTP ranges",
    Answer(200, "The file", media="application/octet-stream"),
    Answer(206, "The requested range", media="application/octet-stream"),
    problems=(416, *HELD),
)
async def media_file(request: web.Request) -> web.StreamResponse:
    claims = _claims(request)
    row = await _recording(request, claims)
    raw = request.match_info["path"]
    # A <video> element asks for many ranges of one file; the first request
    # (no range, or one from byte 0) is the playback worth a row.
    ranges = request.headers.get("Range", "")
    first = not ranges or ranges.replace(" ", "").startswith("bytes=0-")
    action = "download" if raw == MANIFEST else "playback"
    if holder := _holder(request, claims, row):
        _relative(raw)  # a bad path is refused here, not asked of the holder
        async with _from_holder(request, row, holder) as response:
            if first and response.status < 300:
                await _audit(request, claims, action, row, raw)
            return await _pass_on(request, response)
    path = _safe_path(_recorder(request).root / row["id"], raw)
    if first:
        await _audit(request, claims, action, row, raw)
    content_type = {".webm": "video/webm", ".mkv": "video/x-matroska"}.get(path.suffix)
    headers = {"Content-Type": content_type} if content_type else None
    return web.FileResponse(path, headers=headers)


@door(
    "Recompute a recording's hashes and its chain",
    ok(m.Verdict),
    problems=HELD,
    description="on the machine that holds the recording's files, so that they are read where they lie",
)
async def verify_recording(request: web.Request) -> web.StreamResponse:
    claims = _claims(request)
    row = await _recording(request, claims)
    if holder := _holder(request, claims, row):
        async with _from_holder(request, row, holder) as response:
            if response.status != 200:
                return await _pass_on(request, response)
            answer = await response.json()
        await _audit(request, claims, "verify", row, "intact" if answer["intact"] else "altered")
        return json_response(answer)
    folder = _recorder(request).root / row["id"]
    manifest = await asyncio.to_thread(read_manifest, folder)
    verdict = await asyncio.to_thread(verify, folder, manifest, row["chain_head"] or None)
    await _audit(request, claims, "verify", row, "intact" if verdict.intact else "altered")
    return json_response({"id": row["id"]} | verdict.to_json())


# -- export -------------------------------------------------------------------


@door(
    "Start a one-file export (MP4)",
    Answer(202, "The job", m.ExportJob),
    problems=(409, *HELD),
    description="the machine that holds the recording's files renders it; any process answers for the job",
)
async def start_export(request: web.Request) -> web.StreamResponse:
    claims = _claims(request)
    row = await _recording(request, claims)
    if row["status"] == "recording":
        raise Problem(409, "Conflict", "the recording is still running; stop it first")
    if holder := _holder(request, claims, row):
        async with _from_holder(request, row, holder) as response:
            if response.status == 202:
                await _audit(request, claims, "export", row)
            return await _pass_on(request, response)
    recorder = _recorder(request)
    job = request.app[EXPORTS].start(recorder.root / row["id"])
    await _audit(request, claims, "export", row)
    return json_response(job.to_json(), status=202)


@door("The export job's progress", ok(m.ExportJob), problems=HELD)
async def export_status(request: web.Request) -> web.StreamResponse:
    claims = _claims(request)
    row = await _recording(request, claims)
    if holder := _holder(request, claims, row):
        async with _from_holder(request, row, holder) as response:
            return await _pass_on(request, response)
    job = request.app[EXPORTS].get(_recorder(request).root / row["id"])
    if job is None:
        raise NotFound(f"recording {row['id']} has not been exported")
    return json_response(job.to_json())


@door("The finished export", Answer(200, "MP4", media="video/mp4"), problems=HELD)
async def export_file(request: web.Request) -> web.StreamResponse:
    claims = _claims(request)
    row = await _recording(request, claims)
    if holder := _holder(request, claims, row):
        async with _from_holder(request, row, holder) as response:
            if response.status == 200:
                await _audit(request, claims, "download", row, OUTPUT)
            return await _pass_on(request, response)
    job = request.app[EXPORTS].get(_recorder(request).root / row["id"])
    if job is None or job.state != "done":
        raise NotFound(f"no finished export of recording {row['id']}")
    await _audit(request, claims, "download", row, job.output.name)
    disposition = f'attachment; filename="{row["id"]}.mp4"'
    return web.FileResponse(job.output, headers={"Content-Type": "video/mp4", "Content-Disposition": disposition})


# -- audit --------------------------------------------------------------------


@door(
    "The audit log of a branch (operators, admins): recordings played, live streams viewed, snapshots fetched",
    ok(list[m.AuditRow]),
    query=m.AuditQuery,
    problems=FEATURE,
    description="`site`: the branch (default: the caller's home site); a token bound to a room reaches none",
)
async def audit_log(request: web.Request) -> web.Response:
    claims = claims_of(request)
    query = read_query(request, m.AuditQuery)
    if claims.role not in ("operator", "admin"):
        raise Forbidden("only operators and administrators read the audit log")
    rows = await _recorder(request).catalogue.audit_rows(
        _branch(request.app[ROOMS].tree, claims, query.site), recording_id=query.recording, stream_id=query.stream
    )
    return json_response(rows)


def add_routes(app: web.Application, recorder: Recorder | None) -> None:
    if recorder is not None:
        app[RECORDER] = recorder
    app[EXPORTS] = Exports(app[SETTINGS].export_font)
    app.router.add_get("/recordings", page("recordings.html", "The playback page"))
    app.router.add_get("/recordings/{recording_id}", page("recordings.html", "The playback page"))
    app.router.add_get("/api/rooms/{room_id}/recording", recording_status)
    app.router.add_post("/api/rooms/{room_id}/recording", set_recording)
    app.router.add_get("/api/recordings", search)
    app.router.add_get("/api/recordings/{recording_id}", detail)
    app.router.add_get("/api/recordings/{recording_id}/files/{path:.+}", media_file)
    app.router.add_get("/api/recordings/{recording_id}/verify", verify_recording)
    app.router.add_post("/api/recordings/{recording_id}/export", start_export)
    app.router.add_get("/api/recordings/{recording_id}/export", export_status)
    app.router.add_get("/api/recordings/{recording_id}/export/file", export_file)
    app.router.add_get("/api/audit", audit_log)
