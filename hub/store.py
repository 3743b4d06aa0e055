"""Durable records in SQLite: the site tree (later: recordings, cases, audit)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from .sites import Site, SiteTree

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


class Store:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path)
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        self._db.close()

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
