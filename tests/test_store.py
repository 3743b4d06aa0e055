"""The store layer on SQLite and PostgreSQL: numbered migrations,
transactions, data directories made by the code before schema_migrations
opening and upgrading cleanly, and a SQLite data directory copied into
PostgreSQL with nothing lost."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import psycopg
import pytest

from hub.cli.db import copy, upgrade
from hub.core.sites import Department, Site, SiteTree
from hub.core.store import (
    Database,
    DatabaseError,
    Migrations,
    SiteStore,
    SQLiteDatabase,
    Transaction,
    open_database,
)
from hub.workflows.cameras import CameraStore
from hub.workflows.cases import CaseStore
from hub.workflows.dispatch import CallLog
from hub.workflows.training import AttendanceBook
from recorder.catalogue import Catalogue

from .conftest import ROOT, free_port, start_hub

OLD_SCHEMA = (Path(__file__).parent / "data" / "schema-26ea4d8.sql").read_text(encoding="utf-8")
#: The recordings catalogue before recordings named their hub process.
PRE_NODE_SCHEMA = OLD_SCHEMA.replace("    node TEXT NOT NULL DEFAULT '',\n", "")
#: What this code's migrations bring every feature to.
VERSIONS = {"sites": 2, "cases": 3, "trainings": 1, "calls": 1, "cameras": 1, "console": 1, "recordings": 4}


def make_old_database(path: Path, schema: str) -> None:
    """A database as the old code left it: its tables and some rows, no schema_migrations."""
    db = sqlite3.connect(path)
    with db:
        db.executescript(schema)
        db.executemany(
            "INSERT INTO sites (position, id, name, name_en, level, parent) VALUES (?, ?, ?, ?, ?, ?)",
            [
                (0, "qinghai", "青海省", "Qinghai", "province", None),
                (1, "xining", "西宁市", "Xining", "prefecture", "qinghai"),
            ],
        )
        now = time.time()
        db.execute(
            "INSERT INTO cases (id, site_id, origin_site_id, title, dispute_type, parties, status, created_by,"
            " created_at, updated_at) VALUES ('case-old', 'xining', 'xining', '旧案', 'land', ?, 'open', 'm', ?, ?)",
            [json.dumps([{"name": "张三", "role": "applicant"}]), now - 3600, now - 3600],
        )
        db.execute(
            "INSERT INTO recordings (id, room_id, site_id, kind, title, started_at, status)"
            " VALUES ('rec-old', 'site-xining', 'xining', 'standing', '', ?, 'recording')",
            [now - 7200],
        )
        db.execute(
            "INSERT INTO console_layouts (user, body, updated_at) VALUES ('op', ?, ?)",
            [json.dumps({"layouts": [{"name": "墙", "grid": 4, "panes": []}], "current": "墙"}), now],
        )
    db.close()


def read_versions(path: Path) -> dict[str, tuple[int, float]]:
    db = sqlite3.connect(path)
    try:
        rows = db.execute("SELECT feature, MAX(version), MAX(applied_at) FROM schema_migrations GROUP BY feature")
        return {feature: (version, at) for feature, version, at in rows}
    finally:
        db.close()


@pytest.mark.parametrize("schema", [OLD_SCHEMA, PRE_NODE_SCHEMA], ids=["26ea4d8", "catalogue-before-node"])
async def test_old_data_directory_opens_and_upgrades(tmp_path: Path, http: aiohttp.ClientSession, schema: str):
    data = tmp_path / "hub"
    data.mkdir()
    make_old_database(data / "hub.sqlite3", schema)

    hub = start_hub(data)
    try:
        operator = {"Authorization": f"Bearer {hub.sign('op', 'qinghai', 'operator')}"}
        async with http.get(f"{hub.url}/api/sites", headers=operator) as r:
            assert [s["id"] for s in await r.json()] == ["qinghai", "xining"]  # the stored tree, not the demo's
        async with http.get(f"{hub.url}/api/cases/case-old", headers=operator) as r:
            assert r.status == 200
            case = await r.json()
            assert case["title"] == "旧案" and case["parties"][0]["name"] == "张三"
            assert case["version"] == 1  # a row from before versions starts at 1
        async with http.get(f"{hub.url}/api/console/layouts", headers=operator) as r:
            assert (await r.json())["current"] == "墙"
        # Start-up recovery wrote to the upgraded catalogue: the old process's recording is closed.
        async with http.get(f"{hub.url}/api/recordings", params={"site": "qinghai"}, headers=operator) as r:
            recordings = await r.json()
            assert r.status == 200, recordings
            assert [(x["id"], x["status"], x["node"]) for x in recordings] == [("rec-old", "interrupted", "")]
    finally:
        hub.stop()
    versions = read_versions(data / "hub.sqlite3")
    assert {feature: v for feature, (v, _) in versions.items()} == VERSIONS

    # A second start runs no step again.
    hub = start_hub(data)
    hub.stop()
    assert read_versions(data / "hub.sqlite3") == versions


async def test_migrations_run_once_in_order_and_refuse_a_newer_database(database_url: str):
    seen: list[set[str]] = []

    async def look(tx: Transaction) -> None:
        seen.append(await tx.columns("things"))

    first = Migrations("things", (("CREATE TABLE things (id TEXT PRIMARY KEY)",), look))
    db = open_database(database_url)
    try:
        assert await db.migrate(first) == 2
        assert await db.migrate(first) == 0
        assert seen == [{"id"}]
    finally:
        await db.close()

    # Another process (a new Database) with one more step runs only that step.
    second = Migrations("things", (*first.steps, ("ALTER TABLE things ADD COLUMN name TEXT NOT NULL DEFAULT ''",)))
    db = open_database(database_url)
    try:
        assert await db.migrate(second) == 1
        assert await db.columns("things") == {"id", "name"}
        assert (await db.versions())["things"] == 3
    finally:
        await db.close()

    # Older code on a newer database: a clear error, nothing changed.
    db = open_database(database_url)
    try:
        with pytest.raises(DatabaseError, match="newer than this hub knows"):
            await db.migrate(first)
        assert (await db.versions())["things"] == 3
    finally:
        await db.close()


async def test_a_failed_step_or_transaction_changes_nothing(database_url: str):
    db = open_database(database_url)
    try:
        broken = Migrations("broken", (("CREATE TABLE a (x INTEGER)", "CREATE TABLE a (x INTEGER)"),))
        with pytest.raises(DatabaseError, match="already exists"):
            await db.migrate(broken)
        assert await db.columns("a") == set()
        assert "broken" not in await db.versions()

        await db.execute("CREATE TABLE t (x INTEGER UNIQUE)")
        with pytest.raises(DatabaseError):
            async with db.transaction() as tx:
                await tx.execute("INSERT INTO t VALUES (1)")
                await tx.execute("INSERT INTO t VALUES (1)")
        assert await db.fetchall("SELECT x FROM t") == []
        if db.dialect == "sqlite":
            assert (await db.fetchone("PRAGMA journal_mode"))[0] == "wal"  # type: ignore[index]
    finally:
        await db.close()


async def test_statements_wait_for_an_open_transaction(database_url: str):
    """A plain statement issued while a transaction is open is not part of it:
    the transaction's rollback does not take it along."""
    db = open_database(database_url)
    try:
        await db.execute("CREATE TABLE t (x INTEGER)")
        inside = asyncio.Event()

        async def failing() -> None:
            async with db.transaction() as tx:
                await tx.execute("INSERT INTO t VALUES (1)")
                inside.set()
                await asyncio.sleep(0.1)
                raise RuntimeError("abandon")

        task = asyncio.create_task(failing())
        await inside.wait()
        await db.execute("INSERT INTO t VALUES (2)")
        with pytest.raises(RuntimeError):
            await task
        assert await db.fetchall("SELECT x FROM t") == [(2,)]
    finally:
        await db.close()


async def fill_every_table(path: Path) -> None:
    """Rows in the tables the old schema lacks rows in, through the features' own stores."""
    db = SQLiteDatabase(path)
    try:
        await upgrade(db)
        now = time.time()
        entry = {"at": now, "user": "m", "role": "mediator", "action": "session", "room_id": "room-c"}
        await CaseStore(db).add_session(
            {"id": "cs-1", "case_id": "case-old", "room_id": "room-c", "site_id": "xining", "admit": ["xining"]}
            | {"opened_by": "m", "opened_at": now, "started_at": None, "ended_at": None},
            entry,
        )
        await SiteStore(db).replace_sites(
            SiteTree(
                [
                    Site("qinghai", "青海省", "province", None, "Qinghai"),
                    Site("xining", "西宁市", "prefecture", "qinghai", "Xining"),
                ],
                [Department("xining-court", "xining", "court", "西宁市中级人民法院")],
            )
        )
        referral = {"id": "ref-1", "case_id": "case-old", "department_id": "xining-court"} | {
            "department_kind": "court",
            "ask": "judicial_confirmation",
            "note": "",
            "referred_by": "m",
            "from_site": "xining",
            "referred_at": now,
            "decision": None,
            "outcome": "",
            "document_no": "",
            "answered_by": None,
            "answered_at": None,
        }
        referred = entry | {"action": "referred", "department": "xining-court", "referral_id": "ref-1"}
        assert await CaseStore(db).update("case-old", 1, {"departments": ["xining-court"]}, referred, referral)
        book = AttendanceBook(db)
        await book.add_training(
            {"room_id": "room-t", "title": "培训", "site_id": "xining", "trainer": "t", "trainer_name": "T"}
            | {"trainer_site": "qinghai", "started_at": now, "ended_at": None}
        )
        for n in range(3):
            await book.joined(
                {"id": f"p{n}", "room_id": "room-t", "user": f"u{n}", "name": "学员", "role": "terminal"}  # type: ignore[typeddict-unknown-key]
                | {"site_id": "xining", "via": "ws", "node": "n1", "joined_at": now + n},
                "n1",
            )
        await book.beat("n1", now)
        await CallLog(db).add(
            {"id": "call-1", "site_id": "xining", "from": {"user": "u", "name": "U"}, "note": "", "at": now}
            | {"state": "ringing"}
        )
        await CameraStore(db).save(
            [{"id": "cam-1", "site_id": "xining", "name": "门口", "url": "rtsp://127.0.0.1/x", "created_by": "op"}
             | {"created_at": now}]
        )  # fmt: skip
        await Catalogue(db).audit("auditor", "auditor", "play", "rec-old", "xining", "第一次")
    finally:
        await db.close()


async def table_rows(db: Database) -> dict[str, list[tuple[object, ...]]]:
    """Every table's rows, sorted, with the columns in name order."""
    out = {}
    for table in await db.tables():
        if table != "schema_migrations":
            columns = ", ".join(f'"{c}"' for c in sorted(await db.columns(table)))
            out[table] = sorted(await db.fetchall(f"SELECT {columns} FROM {table}"), key=repr)
    return out


def hub_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hub", *args], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )


async def test_a_sqlite_data_directory_moves_into_postgresql(
    tmp_path: Path, postgres_url: str, http: aiohttp.ClientSession
):
    data = tmp_path / "hub"
    data.mkdir()
    make_old_database(data / "hub.sqlite3", OLD_SCHEMA)
    await fill_every_table(data / "hub.sqlite3")
    source_url = f"sqlite:///{data / 'hub.sqlite3'}"

    out = hub_cli("db", "copy", "--from", source_url, "--to", postgres_url)
    assert out.returncode == 0, out.stderr
    source, target = open_database(source_url), open_database(postgres_url)
    try:
        before, after = await table_rows(source), await table_rows(target)
        assert {t: len(r) for t, r in after.items()} == {t: len(r) for t, r in before.items()}
        assert all(before[t] for t in before), "every table has rows to copy"
        assert after == before
        assert await target.versions() == VERSIONS
        # Generated ids go on after the copied ones.
        await Catalogue(target).audit("auditor", "auditor", "play", "rec-old", "xining")
        ids = [row["id"] for row in await Catalogue(target).audit_rows(["xining"])]
        assert ids[0] > max(ids[1:])
    finally:
        await source.close()
        await target.close()

    # A second copy into the filled database is refused and changes nothing.
    source, target = open_database(source_url), open_database(postgres_url)
    try:
        with pytest.raises(DatabaseError, match="already has rows"):
            await copy(source, target)
        assert len((await table_rows(target))["audit"]) == len(before["audit"]) + 1
    finally:
        await source.close()
        await target.close()

    # A hub on the database (its data directory keeps only the signing key) reads the old case.
    hub = start_hub(tmp_path / "node", "--database", postgres_url)
    try:
        operator = {"Authorization": f"Bearer {hub.sign('op', 'qinghai', 'operator')}"}
        async with http.get(f"{hub.url}/api/cases/case-old", headers=operator) as r:
            case = await r.json()
            assert r.status == 200 and case["title"] == "旧案"
            assert [s["id"] for s in case["sessions"]] == ["cs-1"]
    finally:
        hub.stop()
    assert not (tmp_path / "node" / "hub.sqlite3").exists()


async def test_processes_starting_together_run_each_step_once(database_url: str):
    """Two hub processes (two connections) migrating one database at once: every
    step runs once between them, and neither fails."""
    runs: list[str] = []

    async def counted(tx: Transaction) -> None:
        runs.append("step 2")
        await tx.execute("INSERT INTO things (id) VALUES ('first')")

    migrations = Migrations("things", (("CREATE TABLE things (id TEXT PRIMARY KEY)",), counted))
    first, second = open_database(database_url), open_database(database_url)
    try:
        ran = await asyncio.gather(first.migrate(migrations), second.migrate(migrations))
        assert sum(ran) == 2 and runs == ["step 2"]  # each step by one of them, whichever got there first
        assert await first.fetchall("SELECT id FROM things") == [("first",)]
    finally:
        await first.close()
        await second.close()


async def test_a_lost_postgresql_connection_is_replaced(postgres_url: str):
    """The server ends the hub's session (a restart, a failover, an idle
    timeout): that statement fails with DatabaseError, the next one connects again."""
    db = open_database(postgres_url)
    try:
        (pid,) = await db.fetchone("SELECT pg_backend_pid()")  # type: ignore[misc]
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", [pid])
        with pytest.raises(DatabaseError):
            await db.fetchone("SELECT 1")
        assert await db.fetchone("SELECT 1") == (1,)
        assert (await db.fetchone("SELECT pg_backend_pid()")) != (pid,)
    finally:
        await db.close()


async def test_a_bad_database_url_is_a_clear_error(tmp_path: Path, postgres_server: str):
    with pytest.raises(DatabaseError, match="expected sqlite:///PATH or postgresql://"):
        open_database("mysql://root:secret@127.0.0.1/hub")
    # Nothing listens there: the error names the database without its password.
    db = open_database(f"postgresql://hub:secret@127.0.0.1:{free_port()}/hub")
    with pytest.raises(DatabaseError, match="cannot connect") as caught:
        await db.fetchone("SELECT 1")
    assert "secret" not in str(caught.value) and "hub:***@127.0.0.1" in str(caught.value)
    await db.close()
    out = hub_cli("sites", "--database", "mysql://127.0.0.1/hub", "--data", str(tmp_path))
    assert out.returncode == 2 and "error: database URL" in out.stderr
