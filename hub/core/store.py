"""Durable records in SQLite: the site tree, and `Database`, the connection
every feature's tables (cases, calls, trainings, cameras, recordings) use."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import ClassVar

from hub.core.sites import Site, SiteTree

SCHEMA = """
CREATE TABLE IF NOT EXISTS sites (
    position INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    name_en TEXT NOT NULL DEFAULT '',
    level TEXT NOT NULL,
    parent TEXT
);
"""


class Database:
    """One connection to the hub's SQLite file, behind one lock, with the
    subclass's `schema` created if absent.

    Writer threads and the event loop may both use it: the lock serialises
    them, a handful of short writes a second does not need more. Several hub
    processes may share the file: SQLite serialises them and the timeout
    waits out another's write."""

    #: CREATE ... IF NOT EXISTS statements of the subclass's tables.
    schema: ClassVar[str]

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, timeout=10)
        self._lock = threading.Lock()
        with self._lock, self._db:
            self._db.executescript(self.schema)

    def close(self) -> None:
        with self._lock:
            self._db.close()


class Store(Database):
    schema = SCHEMA

    def site_tree(self) -> SiteTree | None:
        rows = self._db.execute("SELECT id, name, level, parent, name_en FROM sites ORDER BY position").fetchall()
        return SiteTree([Site(*row) for row in rows]) if rows else None

    def replace_sites(self, tree: SiteTree) -> None:
        """Import a site tree, replacing the stored one in one transaction."""
        with self._db:
            self._db.execute("DELETE FROM sites")
            self._db.executemany(
                "INSERT INTO sites (position, id, name, name_en, level, parent) VALUES (?, ?, ?, ?, ?, ?)",
                [(i, s.id, s.name, s.name_en, s.level, s.parent) for i, s in enumerate(tree)],
            )
