"""Statistics over HTTP: JSON for the page, CSV for spreadsheets (hub/workflows/stats.py computes)."""

from __future__ import annotations

import time

from aiohttp import web

from hub.core.access import Forbidden
from hub.core.rooms import NotFound
from hub.workflows.cases import works_cases
from hub.workflows.stats import compute, to_csv
from hub.workflows.training import attendance_by_site

from . import models as m
from .api import json_response
from .auth import claims_of
from .cases import FEATURE, _cases
from .doors import Answer, door, ok, read_query
from .keys import DATABASE, ROOMS
from .pages import page
from .problems import Problem, service

#: The period when the query names none: the last 30 days.
DEFAULT_DAYS = 30


async def _stats(request: web.Request) -> dict[str, object]:
    claims = claims_of(request)
    query = read_query(request, m.Period)
    if not works_cases(claims):
        raise Forbidden("statistics are for mediators, operators and administrators")
    if claims.department is not None:
        # A department has no branch of the tree to count; its referrals are in its cases list.
        raise Forbidden("statistics are for the sites' staff, not a department's")
    tree = request.app[ROOMS].tree
    site = query.site or claims.site
    if tree.get(site) is None:
        raise NotFound(f"no site {site}")
    if not tree.covers(claims.site, site):
        raise Forbidden(f"site {site} is outside your jurisdiction")
    until = query.to if query.to is not None else time.time()
    since = query.from_ if query.from_ is not None else until - DEFAULT_DAYS * 86400
    if since >= until:
        raise Problem(400, "Bad Request", "from must be before to")
    db = service(request, DATABASE, "this hub process keeps no records")
    return await compute(_cases(request), site, since, until, db, attendance_by_site)


PERIOD = "`from` defaults to 30 days before `to`, `to` to now"


@door(
    "Case and training statistics of a branch over a period",
    ok(m.Stats),
    query=m.Period,
    problems=FEATURE,
    description=PERIOD,
)
async def stats_json(request: web.Request) -> web.Response:
    return json_response(await _stats(request))


@door(
    "The statistics as CSV (UTF-8 with a byte order mark)",
    Answer(200, "CSV", media="text/csv", headers=("Content-Disposition",)),
    query=m.Period,
    problems=FEATURE,
    description=PERIOD,
)
async def stats_csv(request: web.Request) -> web.Response:
    stats = await _stats(request)
    # A byte order mark: Excel then reads the file as UTF-8 (Chinese names intact).
    body = "\ufeff" + to_csv(stats)
    name = f"stats-{stats['site']}-{time.strftime('%Y%m%d', time.gmtime(float(stats['to'])))}.csv"  # type: ignore[arg-type]
    return web.Response(
        body=body.encode("utf-8"),
        content_type="text/csv",
        charset="utf-8",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


def add_routes(app: web.Application) -> None:
    app.router.add_get("/stats", page("stats.html", "The statistics page"))
    app.router.add_get("/api/stats", stats_json)
    app.router.add_get("/api/stats.csv", stats_csv)
