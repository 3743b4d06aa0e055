"""The recordings catalogue and the audit log, in the hub's database.

Both tables live beside the site tree (`hub.sqlite3` in the data directory,
or the PostgreSQL database of `--database`) so that one backup holds every durable record.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from hub.core.store import Migrations, Tables, Transaction, quoted

RECORDINGS = """CREATE TABLE IF NOT EXISTS recordings (
    id TEXT PRIMARY KEY,
    room_id TEXT NOT NULL,
    site_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    title TEXT NOT NULL DEFAULT '',
    started_at REAL NOT NULL,
    ended_at REAL,
    status TEXT NOT NULL,
    chain_head TEXT NOT NULL DEFAULT '',
    search_text TEXT NOT NULL DEFAULT ''
)"""
AUDIT = """CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    "user" TEXT NOT NULL,
    role TEXT NOT NULL,
    action TEXT NOT NULL,
    recording_id TEXT NOT NULL,
    site_id TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT ''
)"""


async def _add_node(tx: Transaction) -> None:
    """Recordings name the hub process that records them. A catalogue made
    before schema_migrations existed may have the column already."""
    if "node" not in await tx.columns("recordings"):
        await tx.execute("ALTER TABLE recordings ADD COLUMN node TEXT NOT NULL DEFAULT ''")


MIGRATIONS = Migrations(
    "recordings",
    (
        (
            RECORDINGS,
            "CREATE INDEX IF NOT EXISTS recordings_site_time ON recordings (site_id, started_at)",
            AUDIT,
            "CREATE INDEX IF NOT EXISTS audit_site_time ON audit (site_id, at)",
        ),
        _add_node,
        # Live feeds are audited too: who viewed which stream of which room, until when.
        (
            "ALTER TABLE audit ADD COLUMN user_site TEXT NOT NULL DEFAULT ''",
            "ALTER TABLE audit ADD COLUMN stream_id TEXT NOT NULL DEFAULT ''",
            "ALTER TABLE audit ADD COLUMN room_id TEXT NOT NULL DEFAULT ''",
            "ALTER TABLE audit ADD COLUMN ended_at REAL",
        ),
        # Where the node that records a recording answers: any other node fetches its files there.
        ("ALTER TABLE recordings ADD COLUMN node_url TEXT NOT NULL DEFAULT ''",),
    ),
)

COLUMNS = (
    "id",
    "room_id",
    "site_id",
    "kind",
    "title",
    "started_at",
    "ended_at",
    "status",
    "chain_head",
    "node",
    "node_url",
)
AUDIT_COLUMNS = (
    "id",
    "at",
    "user",
    "role",
    "action",
    "recording_id",
    "site_id",
    "detail",
    "user_site",
    "stream_id",
    "room_id",
    "ended_at",
)


class Catalogue(Tables):
    migrations = MIGRATIONS

    async def add(self, record: dict[str, Any]) -> None:
        record = {"node": "", "node_url": ""} | record
        marks = ", ".join("?" * (len(COLUMNS) + 1))
        await self.db.execute(
            f"INSERT INTO recordings ({', '.join(COLUMNS)}, search_text) VALUES ({marks})",
            [record.get(c) for c in COLUMNS] + [record.get("search_text", "")],
        )

    async def update(self, recording_id: str, **fields: Any) -> None:
        names = ", ".join(f"{k} = ?" for k in fields)
        await self.db.execute(f"UPDATE recordings SET {names} WHERE id = ?", [*fields.values(), recording_id])

    async def get(self, recording_id: str) -> dict[str, Any] | None:
        rows = await self._select("WHERE id = ?", [recording_id])
        return rows[0] if rows else None

    async def search(
        self,
        sites: Iterable[str],
        since: float | None = None,
        until: float | None = None,
        kind: str | None = None,
        text: str | None = None,
        limit: int = 200,
    ) -> list[dict[str, Any]]:
        sites = list(sites)
        where = [f"site_id IN ({', '.join('?' * len(sites))})"]
        args: list[Any] = list(sites)
        if since is not None:
            where.append("COALESCE(ended_at, started_at + 86400) >= ?")
            args.append(since)
        if until is not None:
            where.append("started_at <= ?")
            args.append(until)
        if kind:
            where.append("kind = ?")
            args.append(kind)
        if text:
            # LOWER on both sides: SQLite's LIKE ignores ASCII case, PostgreSQL's does not.
            where.append("(LOWER(search_text) LIKE LOWER(?) OR id = ?)")
            args += [f"%{text}%", text]
        return await self._select(f"WHERE {' AND '.join(where)} ORDER BY started_at DESC LIMIT ?", [*args, limit])

    async def by_rooms(self, room_ids: Iterable[str]) -> list[dict[str, Any]]:
        """Recordings of these rooms, oldest first (a case lists its sessions')."""
        room_ids = list(room_ids)
        if not room_ids:
            return []
        return await self._select(f"WHERE room_id IN ({', '.join('?' * len(room_ids))}) ORDER BY started_at", room_ids)

    async def unfinished(self) -> list[dict[str, Any]]:
        return await self._select("WHERE status = 'recording'", [])

    async def older_than(self, when: float) -> list[dict[str, Any]]:
        return await self._select("WHERE status != 'recording' AND started_at < ?", [when])

    async def delete(self, recording_id: str) -> None:
        await self.db.execute("DELETE FROM recordings WHERE id = ?", [recording_id])

    async def _select(self, tail: str, args: list[Any]) -> list[dict[str, Any]]:
        rows = await self.db.fetchall(f"SELECT {', '.join(COLUMNS)} FROM recordings {tail}", args)
        return [dict(zip(COLUMNS, row, strict=True)) for row in rows]

    # -- audit ---------------------------------------------------------------

    async def audit(self, user: str, role: str, action: str, recording_id: str, site_id: str, detail: str = "") -> None:
        await self.db.execute(
            'INSERT INTO audit (at, "user", role, action, recording_id, site_id, detail) VALUES (?, ?, ?, ?, ?, ?, ?)',
            [time.time(), user, role, action, recording_id, site_id, detail],
        )

    async def audit_live(
        self,
        user: str,
        role: str,
        user_site: str,
        action: str,
        stream_id: str,
        room_id: str,
        site_id: str,
        detail: str = "",
        at: float | None = None,
        ended_at: float | None = None,
    ) -> int:
        """A row about a live stream (a view, snapshots fetched); one with no
        `ended_at` stays open until `audit_until` gives its end. Returns the row's id."""
        # fetchall: the statement runs to its end (and commits) before the id is read.
        rows = await self.db.fetchall(
            "INSERT INTO audit"
            ' (at, "user", role, action, recording_id, site_id, detail, user_site, stream_id, room_id, ended_at)'
            " VALUES (?, ?, ?, ?, '', ?, ?, ?, ?, ?, ?) RETURNING id",
            [at or time.time(), user, role, action, site_id, detail, user_site, stream_id, room_id, ended_at],
        )
        return int(rows[0][0])

    async def audit_until(self, row_id: int, ended_at: float, detail: str | None = None) -> None:
        await self.db.execute(
            "UPDATE audit SET ended_at = ?, detail = COALESCE(?, detail) WHERE id = ?", [ended_at, detail, row_id]
        )

    async def audit_rows(
        self,
        sites: Iterable[str],
        recording_id: str | None = None,
        stream_id: str | None = None,
        limit: int = 500,
    ) -> list[dict[str, Any]]:
        sites = list(sites)
        where = f"site_id IN ({', '.join('?' * len(sites))})"
        args: list[Any] = list(sites)
        for column, value in (("recording_id", recording_id), ("stream_id", stream_id)):
            if value:
                where += f" AND {column} = ?"
                args.append(value)
        rows = await self.db.fetchall(
            f"SELECT {quoted(AUDIT_COLUMNS)} FROM audit WHERE {where} ORDER BY id DESC LIMIT ?", [*args, limit]
        )
        out = [dict(zip(AUDIT_COLUMNS, row, strict=True)) for row in rows]
        for row in out:
            row["duration"] = None if row["ended_at"] is None else round(row["ended_at"] - row["at"], 3)
        return out
