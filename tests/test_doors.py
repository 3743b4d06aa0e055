"""Every REST door validates its whole input before it changes anything: a
refused request is a problem (RFC 9457) and leaves the hub exactly as it was
— nothing new in the listings, on the event socket or in SQLite."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from pydantic import TypeAdapter
from yarl import URL

from signaling import models as m

from .conftest import EventSocket, HubProcess, start_hub

PROVINCE, COUNTY, VILLAGE = "qinghai", "guinan", "shangzhai"
SURROGATE = '"\\ud800"'  # a JSON escape of a lone surrogate: valid JSON, not valid Unicode text
#: Nested past the parser's bound (200 levels), small enough to pass the size limit.
DEEP = "[" * 10_000 + "]" * 10_000
HUGE = "x" * 200_000  # past the 128 KiB body limit


@pytest.fixture(scope="module")
def doors_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubProcess]:
    process = start_hub(tmp_path_factory.mktemp("doors"))
    yield process
    process.stop()


@dataclass
class World:
    hub: HubProcess
    http: aiohttp.ClientSession
    operator: str
    mediator: str
    room: str
    training: str
    case: str


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
async def world(doors_hub: HubProcess, http: aiohttp.ClientSession) -> AsyncIterator[World]:
    """A room, a training and a case to aim bad requests at (made before the 'before' picture)."""
    operator = doors_hub.sign("op-doors", PROVINCE, "operator")
    mediator = doors_hub.sign("med-doors", VILLAGE, "mediator")
    made = []
    for path, token, body in (
        ("/api/rooms", operator, {"site_id": VILLAGE, "kind": "mediation", "title": "土地纠纷"}),
        ("/api/trainings", operator, {"title": "培训", "branch": COUNTY}),
        ("/api/cases", mediator, {"title": "邻里", "dispute_type": "neighbour", "parties": [{"name": "张三"}]}),
    ):
        async with http.post(doors_hub.url + path, json=body, headers=auth(token)) as r:
            assert r.status == 201, await r.text()
            made.append(await r.json())
    yield World(doors_hub, http, operator, mediator, made[0]["id"], made[1]["room_id"], made[2]["id"])
    # Each test opens two rooms; a site may hold only so many (HUB_ROOMS_PER_SITE).
    for method, path in (
        ("DELETE", f"/api/rooms/{made[0]['id']}"),
        ("POST", f"/api/trainings/{made[1]['room_id']}/end"),
        ("DELETE", f"/api/rooms/{made[1]['room_id']}"),
    ):
        async with http.request(method, doors_hub.url + path, headers=auth(operator)) as r:
            assert r.status == 200, await r.text()


async def picture(w: World) -> dict[str, Any]:
    """What people could see change: listings for both callers and every SQLite row."""
    seen: dict[str, Any] = {}
    for token in (w.operator, w.mediator):
        for path in ("/api/rooms", "/api/calls", "/api/trainings?all=1", "/api/cases", "/api/console/layouts"):
            async with w.http.get(w.hub.url + path, headers=auth(token)) as r:
                assert r.status == 200, (path, await r.text())
                seen[f"{token[-6:]} {path}"] = await r.json()
    seen["sqlite"] = sqlite_rows(w.hub.data / "hub.sqlite3")
    return seen


def sqlite_rows(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        # attendance_nodes is each process's heartbeat: it ticks on its own, whatever a request did.
        tables = [
            t for (t,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'") if t != "attendance_nodes"
        ]
        return {t: sorted(map(repr, db.execute(f'SELECT * FROM "{t}"'))) for t in tables}  # type: ignore[misc]
    finally:
        db.close()


# (method, path, who, content type, raw body, expected status); {room}, {training}, {case} are filled in.
JSON = "application/json"
BAD = [
    (
        "POST",
        "/api/rooms",
        "operator",
        JSON,
        f'{{"site_id": "{VILLAGE}", "kind": "mediation", "title": {SURROGATE}}}',
        400,
    ),
    (
        "POST",
        "/api/rooms",
        "operator",
        JSON,
        f'{{"site_id": "{VILLAGE}", "kind": "mediation", "title": "a\\u0007b"}}',
        400,
    ),
    ("POST", "/api/rooms", "operator", JSON, f'{{"site_id": "{VILLAGE}", "kind": "mediation", "colour": "red"}}', 400),
    ("POST", "/api/rooms", "operator", "text/plain", f'{{"site_id": "{VILLAGE}", "kind": "mediation"}}', 415),
    ("POST", "/api/rooms", "operator", JSON, f'{{"site_id": "{VILLAGE}", "kind": "training"}}', 400),
    ("POST", "/api/rooms", "operator", JSON, f'{{"site_id": "{VILLAGE}", "kind": "mediation", "title": {DEEP}}}', 400),
    (
        "POST",
        "/api/rooms",
        "operator",
        JSON,
        f'{{"site_id": "{VILLAGE}", "kind": "mediation", "title": "{"x" * 201}"}}',
        400,
    ),
    (
        "POST",
        "/api/rooms",
        "operator",
        JSON,
        f'{{"site_id": "{VILLAGE}", "kind": "mediation", "title": "{HUGE}"}}',
        413,
    ),
    ("POST", "/api/rooms/{room}/invites", "operator", JSON, '{"ttl": "1800"}', 400),
    ("POST", "/api/rooms/{room}/invites", "operator", JSON, '{"ttl": 1800, "admin": true}', 400),
    ("POST", "/api/rooms/{room}/recording", "operator", JSON, '{"on": "yes"}', 400),
    ("POST", "/api/calls", "mediator", JSON, f'{{"note": {SURROGATE}}}', 400),
    ("POST", "/api/calls", "mediator", JSON, f'{{"note": {DEEP}}}', 400),
    ("POST", "/api/calls", "mediator", JSON, '{"note": NaN}', 400),
    ("POST", "/api/calls", "mediator", "text/plain", '{"note": "help"}', 415),
    ("POST", "/api/conferences", "operator", JSON, f'{{"title": {SURROGATE}, "sites": ["{COUNTY}"]}}', 400),
    ("POST", "/api/conferences", "operator", JSON, f'{{"title": "t", "sites": ["{COUNTY}"], "ring": 1}}', 400),
    ("POST", "/api/trainings", "operator", JSON, f'{{"title": {SURROGATE}, "branch": "{COUNTY}"}}', 400),
    ("POST", "/api/trainings", "operator", JSON, f'{{"title": "t", "branch": "{COUNTY}", "x": 1}}', 400),
    ("POST", "/api/trainings/{training}/speakers", "operator", JSON, '{"participant_id": "p-1", "x": 1}', 400),
    (
        "POST",
        "/api/cases",
        "mediator",
        JSON,
        f'{{"title": "t", "dispute_type": "land", "parties": [{{"name": "a"}}], "summary": {SURROGATE}}}',
        400,
    ),
    ("POST", "/api/cases", "mediator", JSON, f'{{"title": "t", "dispute_type": "land", "parties": {DEEP}}}', 400),
    ("PATCH", "/api/cases/{case}", "mediator", JSON, f'{{"outcome": {SURROGATE}}}', 400),
    ("PATCH", "/api/cases/{case}", "mediator", "text/plain", '{"status": "mediating"}', 415),
    ("POST", "/api/cases/{case}/escalate", "mediator", JSON, f'{{"note": {SURROGATE}}}', 400),
    (
        "POST",
        "/api/cameras",
        "operator",
        JSON,
        f'{{"site_id": "{VILLAGE}", "name": {SURROGATE}, "url": "rtsp://127.0.0.1/x"}}',
        400,
    ),
    (
        "POST",
        "/api/cameras",
        "operator",
        JSON,
        f'{{"site_id": "{VILLAGE}", "name": "c", "url": "rtsp://127.0.0.1/x", "user": "root"}}',
        400,
    ),
    ("PUT", "/api/console/layouts", "operator", JSON, f'{{"layouts": {DEEP}}}', 400),
    ("PUT", "/api/console/layouts", "operator", JSON, '{"layouts": [], "theme": "dark"}', 400),
    ("GET", "/api/stats.csv?to=1e20", "operator", None, None, 400),
    ("GET", "/api/stats?from=nan", "operator", None, None, 400),
    ("GET", "/api/stats?to=inf", "operator", None, None, 400),
    ("GET", "/api/recordings?from=1e400", "operator", None, None, 400),
    ("GET", "/api/cases?status=lost", "operator", None, None, 400),
    ("DELETE", "/api/rooms", "operator", None, None, 405),
]


@pytest.mark.parametrize(("method", "path", "who", "content_type", "body", "status"), BAD, ids=lambda v: str(v)[:40])
async def test_a_refused_request_changes_nothing(
    world: World, method: str, path: str, who: str, content_type: str | None, body: str | None, status: int
) -> None:
    w = world
    token = getattr(w, who)
    url = w.hub.url + path.format(room=w.room, training=w.training, case=w.case)
    watcher = await EventSocket.open(w.http, w.hub, w.operator)
    before = await picture(w)
    headers = auth(token) | ({"Content-Type": content_type} if content_type else {})
    async with w.http.request(method, url, data=body.encode() if body else None, headers=headers) as r:
        assert r.status == status, await r.text()
        assert r.content_type == "application/problem+json"
        problem = await r.json()
        if status == 405:
            assert set(r.headers["Allow"].split(",")) == {"GET", "HEAD", "POST"}
    assert problem["status"] == status
    await watcher.settle()
    assert [msg["type"] for msg in watcher.messages if msg["type"] not in ("hello", "pong", "presence")] == []
    await watcher.close()
    assert await picture(w) == before


async def test_a_genuine_call_rings_after_a_poisoned_one(world: World) -> None:
    """The refused note held no site key: the village's real emergency call rings at once."""
    w = world
    poisoned = f'{{"note": {SURROGATE}}}'.encode()
    headers = auth(w.mediator) | {"Content-Type": JSON}
    async with w.http.post(w.hub.url + "/api/calls", data=poisoned, headers=headers) as r:
        assert r.status == 400
    async with w.http.post(w.hub.url + "/api/calls", json={"note": "着火了"}, headers=auth(w.mediator)) as r:
        assert r.status == 201, await r.text()
        call = TypeAdapter(m.Call).validate_python(await r.json())
    async with w.http.delete(f"{w.hub.url}/api/calls/{call.id}", headers=auth(w.mediator)) as r:
        assert r.status == 200


async def test_an_over_long_url_is_one_log_line(doors_hub: HubProcess, http: aiohttp.ClientSession) -> None:
    before = doors_hub.log.read_text()
    async with http.get(f"{doors_hub.url}/api/rooms?q={'a' * 20_000}") as r:
        assert r.status == 400
    async with http.get(f"{doors_hub.url}/healthz") as r:  # the hub goes on; its log is written by now
        assert r.status == 200
    added = doors_hub.log.read_text()[len(before) :]
    assert "refused a malformed request" in added
    assert "Traceback" not in added


async def test_responses_match_their_models(world: World) -> None:
    """The document's response schemas are the models; real answers validate against them."""
    w = world
    checks: list[tuple[str, str, Any]] = [
        (w.operator, "/api/me", m.Me),
        (w.operator, f"/api/sites/{COUNTY}", m.SiteDetail),
        (w.operator, "/api/rooms", list[m.ListedRoom]),
        (w.operator, f"/api/rooms/{w.room}", m.RoomDetail),
        (w.operator, f"/api/rooms/{w.room}/sites", list[m.Site]),
        (w.operator, f"/api/rooms/{w.room}/recording", m.RecordingState),
        (w.operator, "/api/trainings?all=1", list[m.ListedTraining]),
        (w.operator, f"/api/trainings/{w.training}/sites", list[m.Site]),
        (w.operator, f"/api/trainings/{w.training}/attendance", m.Attendance),
        (w.mediator, "/api/cases", list[m.ListedCase]),
        (w.mediator, f"/api/cases/{w.case}", m.CaseDetail),
        (w.operator, "/api/stats", m.Stats),
        (w.operator, f"/api/console/status?site={COUNTY}", m.ConsoleStatus),
        (w.operator, "/healthz", m.Health),
    ]
    for token, path, model in checks:
        async with w.http.get(w.hub.url + path, headers=auth(token)) as r:
            assert r.status == 200, (path, await r.text())
            TypeAdapter(model).validate_python(await r.json())


@pytest.mark.parametrize("path", ["/web/%2e%2e/pyproject.toml", "/web/js/..%2f..%2fhub%2fconfig.py", "/web/nothere.js"])
async def test_web_files_stay_inside_web(doors_hub: HubProcess, http: aiohttp.ClientSession, path: str) -> None:
    async with http.get(URL(doors_hub.url + path, encoded=True)) as r:  # encoded: the client keeps the ".."
        assert r.status == 404 and r.content_type == "application/problem+json"
        assert "no file" in (await r.json())["detail"]  # refused by the handler, not unrouted
    async with http.get(doors_hub.url + "/web/js/api.js") as r:
        assert r.status == 200 and "javascript" in r.content_type
