"""Durable records: `Database`, the one door to the hub's database file that
every feature's tables (sites, cases, calls, trainings, cameras, layouts,
recordings, audit) go through, and the site tree's own tables.

Nothing here runs SQL on the event loop: the loop forwards every packet, and
a write that waits for the disk (or for another hub process's write) would
stall every stream. A `Database` owns one SQLite connection that lives on
one thread of its own; every method is a coroutine that hands its work to
that thread and awaits it. One connection per file serialises this
process's statements (SQLite allows one writer at a time anyway) and needs
no pool; WAL lets readers in other hub processes go on while one writes,
and the busy timeout waits out another process's write on that thread.

Callers see only coroutines, rows as tuples and `DatabaseError`: no sqlite3
object leaves this module, so another backend can stand behind the same
interface. Each feature declares its schema as numbered `Migrations`;
`schema_migrations` records which steps a database has had.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from hub.core.sites import Site, SiteTree

#: Seconds a statement waits for another hub process's write to the same
#: file before it fails. It waits on the database thread, not on the loop.
BUSY_TIMEOUT = 5.0

Args = Sequence[Any] | Mapping[str, Any]
Row = tuple[Any, ...]
T = TypeVar("T")


class DatabaseError(Exception):
    """A statement failed, or the database is closed or newer than this code."""


class _Statements(ABC):
    """What a `Database` and a `Transaction` both run."""

    @abstractmethod
    async def _call(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run `work` with the connection on the database thread."""

    async def execute(self, sql: str, args: Args = ()) -> int:
        """Run one statement; the number of rows it changed."""
        return await self._call(lambda c: c.execute(sql, args).rowcount)

    async def executemany(self, sql: str, rows: Iterable[Args]) -> int:
        rows = list(rows)
        return await self._call(lambda c: c.executemany(sql, rows).rowcount)

    async def fetchall(self, sql: str, args: Args = ()) -> list[Row]:
        return await self._call(lambda c: c.execute(sql, args).fetchall())

    async def fetchone(self, sql: str, args: Args = ()) -> Row | None:
        return await self._call(lambda c: c.execute(sql, args).fetchone())

    async def columns(self, table: str) -> set[str]:
        """The column names of a table (empty if there is no such table)."""
        quoted = table.replace('"', '""')
        return {row[1] for row in await self.fetchall(f'PRAGMA table_info("{quoted}")')}


class Transaction(_Statements):
    """Statements that commit together or not at all (`Database.transaction`)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def _call(self, work: Callable[[sqlite3.Connection], T]) -> T:
        return await self._db._on_thread(work)


#: A migration step: SQL statements run in order, or a coroutine given the
#: step's transaction (for a step that must look at the schema first).
Step = Sequence[str] | Callable[[Transaction], Awaitable[None]]


@dataclass(frozen=True)
class Migrations:
    """A feature's schema as numbered steps: step n (counting from 1) runs
    once per database, in its own transaction, recorded as (feature, n) in
    `schema_migrations`. Steps are only ever appended, never edited."""

    feature: str
    steps: tuple[Step, ...]


MIGRATIONS_TABLE = """CREATE TABLE IF NOT EXISTS schema_migrations (
    feature TEXT NOT NULL,
    version INTEGER NOT NULL,
    applied_at REAL NOT NULL,
    PRIMARY KEY (feature, version)
)"""


class Database(_Statements):
    """The hub's database file, one connection on one thread.

    A plain call (`execute`, `fetchall`...) is a transaction of its own;
    `transaction()` groups statements. Either waits for an open transaction
    of this process to end first, so statements never join one by accident.
    """

    def __init__(self, path: Path, busy_timeout: float = BUSY_TIMEOUT) -> None:
        self.path = path
        self._busy_timeout = busy_timeout
        self._thread = ThreadPoolExecutor(1, thread_name_prefix=f"db-{path.name}")
        self._connection: sqlite3.Connection | None = None
        self._closed = False
        self._lock = asyncio.Lock()
        self._migrated: set[str] = set()

    # -- the database thread -------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        if self._closed:
            raise DatabaseError(f"database {self.path} is closed")
        if self._connection is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: no implicit BEGIN; transaction() says BEGIN and COMMIT itself.
            connection = sqlite3.connect(
                self.path, timeout=self._busy_timeout, isolation_level=None, check_same_thread=False
            )
            connection.execute("PRAGMA journal_mode = WAL")
            self._connection = connection
        return self._connection

    async def _on_thread(self, work: Callable[[sqlite3.Connection], T]) -> T:
        if self._closed:
            raise DatabaseError(f"database {self.path} is closed")

        def run() -> T:
            try:
                return work(self._connect())
            except sqlite3.Error as exc:
                raise DatabaseError(f"{self.path.name}: {exc}") from exc

        return await asyncio.get_running_loop().run_in_executor(self._thread, run)

    async def _call(self, work: Callable[[sqlite3.Connection], T]) -> T:
        async with self._lock:
            return await self._on_thread(work)

    # -- public ----------------------------------------------------------------------

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        """`async with db.transaction() as tx:` statements on `tx` commit at
        the end of the block, or roll back if it raises."""
        async with self._lock:
            # IMMEDIATE takes the write lock at once: two processes never both
            # read, then both fail to upgrade to writing.
            await self._on_thread(lambda c: c.execute("BEGIN IMMEDIATE"))
            try:
                yield Transaction(self)
                await self._on_thread(lambda c: c.execute("COMMIT"))
            except BaseException:
                await self._on_thread(lambda c: c.in_transaction and c.execute("ROLLBACK"))
                raise

    async def migrate(self, migrations: Migrations) -> int:
        """Bring a feature's tables up to its last step; how many steps ran.
        Several hub processes starting at once each run a step at most once
        between them: the check and the step share a write transaction."""
        if migrations.feature in self._migrated:
            return 0
        await self.execute(MIGRATIONS_TABLE)
        feature, ran = migrations.feature, 0
        for version, step in enumerate(migrations.steps, 1):
            async with self.transaction() as tx:
                if await tx.fetchone(
                    "SELECT 1 FROM schema_migrations WHERE feature = ? AND version = ?", [feature, version]
                ):
                    continue
                if callable(step):
                    await step(tx)
                else:
                    for sql in step:
                        await tx.execute(sql)
                await tx.execute(
                    "INSERT INTO schema_migrations (feature, version, applied_at) VALUES (?, ?, ?)",
                    [feature, version, time.time()],
                )
                ran += 1
        newest = await self.fetchone("SELECT MAX(version) FROM schema_migrations WHERE feature = ?", [feature])
        if newest is not None and (newest[0] or 0) > len(migrations.steps):
            raise DatabaseError(
                f"{self.path}: {feature} tables are at version {newest[0]}, newer than this hub knows"
                f" ({len(migrations.steps)}); run the newer hub"
            )
        self._migrated.add(feature)
        return ran

    async def versions(self) -> dict[str, int]:
        """Each feature's last applied step."""
        await self.execute(MIGRATIONS_TABLE)
        rows = await self.fetchall("SELECT feature, MAX(version) FROM schema_migrations GROUP BY feature")
        return dict(rows)

    async def close(self) -> None:
        def close(connection: sqlite3.Connection) -> None:
            connection.close()
            self._connection = None
            self._closed = True

        if not self._closed:
            if self._connection is not None:
                await self._call(close)
            self._closed = True
        self._thread.shutdown(wait=False)


class Tables:
    """A feature's tables in a `Database`: `open()` migrates them, the
    subclass's coroutines query them."""

    migrations: ClassVar[Migrations]

    def __init__(self, db: Database) -> None:
        self.db = db

    async def open(self) -> None:
        await self.db.migrate(self.migrations)


# -- the site tree ---------------------------------------------------------------------

SITES = Migrations(
    "sites",
    (
        (
            """CREATE TABLE IF NOT EXISTS sites (
                position INTEGER PRIMARY KEY,
                id TEXT NOT NULL UNIQUE,
                name TEXT NOT NULL,
                name_en TEXT NOT NULL DEFAULT '',
                level TEXT NOT NULL,
                parent TEXT
            )""",
        ),
    ),
)


class SiteStore(Tables):
    migrations = SITES

    async def site_tree(self) -> SiteTree | None:
        rows = await self.db.fetchall("SELECT id, name, level, parent, name_en FROM sites ORDER BY position")
        return SiteTree([Site(*row) for row in rows]) if rows else None

    async def replace_sites(self, tree: SiteTree) -> None:
        """Import a site tree, replacing the stored one in one transaction."""
        async with self.db.transaction() as tx:
            await tx.execute("DELETE FROM sites")
            await tx.executemany(
                "INSERT INTO sites (position, id, name, name_en, level, parent) VALUES (?, ?, ?, ?, ?, ?)",
                [(i, s.id, s.name, s.name_en, s.level, s.parent) for i, s in enumerate(tree)],
            )
