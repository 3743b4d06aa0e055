"""Every feature's tables through their own SQL, on SQLite and on a real
PostgreSQL server: the statements each backend must run the same way."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest

from hub.core.store import Database, open_database
from hub.monitoring.console import Layouts, LayoutStore
from hub.workflows.cameras import CameraStore
from hub.workflows.cases import CaseStore
from hub.workflows.dispatch import CallLog
from hub.workflows.training import AttendanceBook
from recorder.catalogue import Catalogue


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    db = open_database(database_url)
    yield db
    await db.close()


def participant(pid: str, user: str, site: str, joined_at: float) -> dict[str, object]:
    return {"id": pid, "room_id": "room-t", "user": user, "name": user, "role": "terminal", "site_id": site} | {
        "via": "ws",
        "node": "n1",
        "joined_at": joined_at,
    }


async def test_cases_update_only_from_the_version_read(db: Database):
    store = CaseStore(db)
    await store.open()
    now = time.time()
    case = {
        "id": "case-1",
        "site_id": "v1",
        "origin_site_id": "v1",
        "title": "土地",
        "dispute_type": "land",
        "parties": [{"name": "张三"}],
        "summary": "",
        "status": "open",
        "result": None,
        "outcome": "",
        "created_by": "m",
        "created_at": now,
        "updated_at": now,
        "version": 1,
        "departments": [],
    }
    entry = {"at": now, "user": "m", "role": "mediator", "action": "opened", "to_status": "open"}
    await store.insert(case, entry)
    assert await store.update("case-1", 1, {"status": "mediating"}, entry)
    assert not await store.update("case-1", 1, {"status": "closed"}, entry)  # decided on a stale version
    stored = await store.get("case-1")
    assert stored is not None and stored["status"] == "mediating" and stored["version"] == 2
    assert stored["parties"] == [{"name": "张三"}]
    assert stored["created_at"] == now  # a full double: PostgreSQL's REAL would have rounded it
    history = (await store.history(["case-1"]))["case-1"]
    assert [h["user"] for h in history] == ["m", "m"] and history[0]["action"] == "opened"


async def test_attendance_closes_dead_nodes_and_sums_by_site(db: Database):
    book = AttendanceBook(db)
    await book.open()
    t0 = 1_800_000_000.0
    await book.joined(participant("p1", "alice", "v1", t0), "n1")  # type: ignore[arg-type]
    await book.joined(participant("p2", "bob", "v1", t0 + 60), "n1")  # type: ignore[arg-type]
    await book.joined(participant("p3", "alice", "v2", t0), "n2")  # type: ignore[arg-type]
    await book.left("room-t", "p1", t0 + 600)
    await book.beat("n2", t0 + 300)
    await book.beat("n2", t0 + 420)  # the upsert keeps the last beat
    # n1 and n2 are both gone: n2's open row ends at its last beat, n1's (never beat) at `now`.
    assert await book.close_dead({"n3"}, now=t0 + 900) == 2
    rows = {r["participant_id"]: r for r in await book.rows("room-t")}
    assert rows["p3"]["left_at"] == t0 + 420 and rows["p3"]["interrupted"] == 1
    assert rows["p2"]["left_at"] == t0 + 900 and rows["p1"]["interrupted"] == 0
    by_site = {r["site_id"]: r for r in await book.by_site(t0 + 120, t0 + 3600)}
    # v1: alice 120..600 (clipped to the period) + bob 120..900 = 480 + 780 s, two people.
    assert by_site["v1"] == {"site_id": "v1", "trainings": 1, "people": 2, "minutes": 21.0}
    assert by_site["v2"]["minutes"] == 5.0 and by_site["v2"]["people"] == 1


async def test_cameras_are_replaced_by_id(db: Database):
    store = CameraStore(db)
    await store.open()
    camera = {"id": "cam-1", "site_id": "v1", "name": "gate", "url": "rtsp://127.0.0.1/a"}
    await store.save([camera | {"created_by": "op", "created_at": 1.5}])
    await store.save([camera | {"url": "rtsp://127.0.0.1/b", "created_by": "op", "created_at": 2.5}])
    assert await store.all() == [camera | {"url": "rtsp://127.0.0.1/b", "created_by": "op", "created_at": 2.5}]
    assert await store.id_of("v1", "gate") == "cam-1"
    assert await store.delete("cam-1") and not await store.delete("cam-1")


async def test_layouts_are_per_user(db: Database):
    store = LayoutStore(db)
    await store.open()
    wall = Layouts.model_validate({"layouts": [{"name": "墙", "grid": 4, "panes": []}], "current": "墙"})
    await store.put("op", Layouts())
    await store.put("op", wall)
    assert await store.get("op") == wall
    assert await store.get("someone-else") == Layouts()


async def test_catalogue_search_and_audit(db: Database):
    catalogue = Catalogue(db)
    await catalogue.open()
    base = {"room_id": "site-v1", "site_id": "v1", "kind": "standing", "ended_at": None, "chain_head": ""}
    await catalogue.add(base | {"id": "rec-1", "title": "", "started_at": 100.0, "status": "recording"})
    await catalogue.add(base | {"id": "rec-2", "title": "", "started_at": 200.0, "status": "complete"})
    await catalogue.update("rec-1", search_text="Land dispute 土地")
    # Case-insensitive for ASCII on both backends (SQLite's LIKE is, PostgreSQL's is not).
    assert [r["id"] for r in await catalogue.search(["v1"], text="land")] == ["rec-1"]
    assert [r["id"] for r in await catalogue.search(["v1"], text="土地")] == ["rec-1"]
    assert [r["id"] for r in await catalogue.search(["v1"])] == ["rec-2", "rec-1"]
    assert [r["id"] for r in await catalogue.unfinished()] == ["rec-1"]
    await catalogue.audit("alice", "auditor", "play", "rec-1", "v1")
    await catalogue.audit("bob", "auditor", "download", "rec-1", "v1")
    rows = await catalogue.audit_rows(["v1"], "rec-1")
    assert [(r["user"], r["action"]) for r in rows] == [("bob", "download"), ("alice", "play")]
    assert rows[0]["id"] > rows[1]["id"]


async def test_calls_are_logged_newest_first(db: Database):
    log = CallLog(db)
    await log.open()
    for n, at in enumerate((10.0, 30.0, 20.0)):
        await log.add(
            {"id": f"call-{n}", "site_id": "v1", "from": {"user": "u", "name": "U"}, "note": ""}
            | {
                "at": at,
                "state": "ringing",
            }
        )
    await log.end({"id": "call-1", "state": "answered", "answered_by": {"user": "op", "name": "Op"}, "ended_at": 31.0})
    recent = await log.recent(["v1"], 2)
    assert [c["id"] for c in recent] == ["call-1", "call-2"]
    assert recent[0]["state"] == "answered" and recent[0]["answered_by"]["user"] == "op"
