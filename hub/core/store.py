"""Durable records: `Database`, the one door to the hub's database that
every feature's tables (sites, cases, calls, trainings, cameras, layouts,
recordings, audit) go through, and the site tree's own tables.

Two backends stand behind one async interface, chosen by URL
(`open_database`): `SQLiteDatabase` (`sqlite:///PATH`, the embedded
default, one file in the data directory) and `PostgresDatabase`
(`postgresql://...`, for hub processes on several machines).

Nothing here runs blocking SQL on the event loop: the loop forwards every
packet, and a write that waits for the disk (or for another hub process's
write) would stall every stream. SQLite's connection lives on a thread of
its own and every call is handed to it; psycopg's AsyncConnection waits on
the server's socket through the loop. Either way a process holds one
connection and serialises its statements on it (a lock), which needs no
pool and keeps a plain statement out of someone else's transaction.

Callers see only coroutines, rows as tuples and `DatabaseError`: no driver
object leaves this module. The features write SQL both backends run: `?`
placeholders (or `:name` with a mapping), `ON CONFLICT ... DO UPDATE`,
`GREATEST`/`LEAST` (given to SQLite as functions), identifiers that are
keywords on PostgreSQL quoted (`"user"`). The PostgreSQL backend rewrites
placeholders and, in `CREATE TABLE`/`ALTER TABLE`, SQLite's type names into
PostgreSQL's of the same meaning. Each feature declares its schema as
numbered `Migrations`; `schema_migrations` records which steps a database
has had.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar
from urllib.parse import urlsplit, urlunsplit

import psycopg

from hub.core.sites import Department, Site, SiteTree

#: Seconds a statement waits for another hub process's write to the same
#: file before it fails. It waits on the database thread, not on the loop.
BUSY_TIMEOUT = 5.0
#: Seconds to wait for a PostgreSQL server to accept a connection.
CONNECT_TIMEOUT = 10

Args = Sequence[Any] | Mapping[str, Any]
Row = tuple[Any, ...]
Fetch = Literal["rowcount", "one", "all"]
T = TypeVar("T")


class DatabaseError(Exception):
    """A statement failed, the database is unreachable, closed, or newer than this code."""


def quote(identifier: str) -> str:
    """A table or column name as a quoted identifier: `user` is a column in
    SQLite and the current role's name in PostgreSQL unless quoted."""
    return '"' + identifier.replace('"', '""') + '"'


def quoted(columns: Iterable[str]) -> str:
    """A column list with every name quoted."""
    return ", ".join(quote(c) for c in columns)


class _Statements(ABC):
    """What a `Database` and a `Transaction` both run."""

    @property
    @abstractmethod
    def database(self) -> Database:
        """The database these statements go to."""

    @abstractmethod
    async def _run(self, sql: str, args: Args | list[Args], fetch: Fetch, many: bool = False) -> Any:
        """Run one statement (or one per row of `args`, `many`) and fetch what is asked."""

    @property
    def dialect(self) -> str:
        """Which backend: sqlite or postgresql (for the rare step whose SQL must differ)."""
        return self.database.dialect

    async def execute(self, sql: str, args: Args = ()) -> int:
        """Run one statement; the number of rows it changed."""
        return int(await self._run(sql, args, "rowcount"))

    async def executemany(self, sql: str, rows: Iterable[Args]) -> int:
        rows = list(rows)
        return int(await self._run(sql, rows, "rowcount", many=True)) if rows else 0

    async def fetchall(self, sql: str, args: Args = ()) -> list[Row]:
        return list(await self._run(sql, args, "all"))

    async def fetchone(self, sql: str, args: Args = ()) -> Row | None:
        row = await self._run(sql, args, "one")
        return None if row is None else tuple(row)

    async def columns(self, table: str) -> set[str]:
        """The column names of a table (empty if there is no such table)."""
        return await self.database._columns(self, table)


class Transaction(_Statements):
    """Statements that commit together or not at all (`Database.transaction`)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    @property
    def database(self) -> Database:
        return self._db

    async def _run(self, sql: str, args: Args | list[Args], fetch: Fetch, many: bool = False) -> Any:
        return await self._db._run_unlocked(sql, args, fetch, many)


#: A migration step: SQL statements run in order, or a coroutine given the
#: step's transaction (for a step that must look at the schema first).
Step = Sequence[str] | Callable[[Transaction], Awaitable[None]]


@dataclass(frozen=True)
class Migrations:
    """A feature's schema as numbered steps: step n (counting from 1) runs
    once per database, in its own transaction, recorded as (feature, n) in
    `schema_migrations`. Steps are only ever appended; a step's text may
    change only where every database that ran it keeps the same schema
    (quoting a column name, say)."""

    feature: str
    steps: tuple[Step, ...]


MIGRATIONS_TABLE = """CREATE TABLE IF NOT EXISTS schema_migrations (
    feature TEXT NOT NULL,
    version INTEGER NOT NULL,
    applied_at REAL NOT NULL,
    PRIMARY KEY (feature, version)
)"""


class Database(_Statements):
    """The hub's database: one connection, its statements one at a time.

    A plain call (`execute`, `fetchall`...) is a transaction of its own;
    `transaction()` groups statements. Either waits for an open transaction
    of this process to end first, so statements never join one by accident.
    Explicit transactions of all hub processes on one database run one at a
    time (SQLite's write lock, a PostgreSQL advisory lock), so a step that
    reads and then writes never races another process's.
    """

    dialect: ClassVar[str]

    def __init__(self, name: str) -> None:
        #: What the database is called in messages (never a password).
        self.name = name
        self._closed = False
        self._lock = asyncio.Lock()
        self._migrated: set[str] = set()

    @property
    def database(self) -> Database:
        return self

    # -- what a backend provides --------------------------------------------------

    @abstractmethod
    async def _run_unlocked(self, sql: str, args: Args | list[Args], fetch: Fetch, many: bool) -> Any:
        """Run on the connection; the caller holds the lock."""

    @abstractmethod
    async def _begin(self) -> None:
        """Open a transaction that holds the database's write lock."""

    @abstractmethod
    async def _end(self, commit: bool) -> None:
        """Commit, or roll back if a transaction is open."""

    @abstractmethod
    async def _columns(self, on: _Statements, table: str) -> set[str]: ...

    @abstractmethod
    async def tables(self) -> list[str]:
        """The names of the tables, sorted (schema_migrations included)."""

    async def resync_identity(self, tx: Transaction, table: str) -> None:
        """After rows were inserted with their own ids: the next generated id
        comes after the largest (SQLite's AUTOINCREMENT keeps track itself)."""

    @abstractmethod
    async def _disconnect(self) -> None: ...

    # -- public ----------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise DatabaseError(f"database {self.name} is closed")

    async def _run(self, sql: str, args: Args | list[Args], fetch: Fetch, many: bool = False) -> Any:
        self._check_open()
        async with self._lock:
            return await self._run_unlocked(sql, args, fetch, many)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        """`async with db.transaction() as tx:` statements on `tx` commit at
        the end of the block, or roll back if it raises."""
        self._check_open()
        async with self._lock:
            await self._begin()
            try:
                yield Transaction(self)
                await self._end(commit=True)
            except BaseException:
                await self._end(commit=False)
                raise

    async def migrate(self, migrations: Migrations) -> int:
        """Bring a feature's tables up to its last step; how many steps ran.
        Several hub processes starting at once each run a step at most once
        between them: the check and the step share a write transaction."""
        if migrations.feature in self._migrated:
            return 0
        feature, ran = migrations.feature, 0
        for version, step in enumerate(migrations.steps, 1):
            async with self.transaction() as tx:
                await tx.execute(MIGRATIONS_TABLE)
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
                f"{self.name}: {feature} tables are at version {newest[0]}, newer than this hub knows"
                f" ({len(migrations.steps)}); run the newer hub"
            )
        self._migrated.add(feature)
        return ran

    async def versions(self) -> dict[str, int]:
        """Each feature's last applied step."""
        async with self.transaction() as tx:
            await tx.execute(MIGRATIONS_TABLE)
            rows = await tx.fetchall("SELECT feature, MAX(version) FROM schema_migrations GROUP BY feature")
        return {feature: int(version) for feature, version in rows}

    async def close(self) -> None:
        if not self._closed:
            async with self._lock:
                self._closed = True
                await self._disconnect()


def open_database(url: str) -> Database:
    """The database a URL names: `sqlite:///PATH` (three slashes, then the
    path: `sqlite:////abs/hub.sqlite3` is absolute) or
    `postgresql://user:password@host:port/name` (libpq's URL, its query
    options included). Nothing is connected until the first statement."""
    scheme = url.partition(":")[0].lower()
    if scheme == "sqlite":
        if not url.startswith("sqlite:///") or len(url) == len("sqlite:///"):
            raise DatabaseError(f"database URL {url!r}: a SQLite URL is sqlite:///PATH")
        return SQLiteDatabase(Path(url[len("sqlite:///") :]))
    if scheme in ("postgresql", "postgres"):
        return PostgresDatabase(url)
    raise DatabaseError(f"database URL {redact_url(url)!r}: expected sqlite:///PATH or postgresql://...")


def redact_url(url: str) -> str:
    """A database URL without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


# -- SQLite ----------------------------------------------------------------------------


def _greatest(*values: Any) -> Any:
    present = [v for v in values if v is not None]
    return max(present) if present else None


def _least(*values: Any) -> Any:
    present = [v for v in values if v is not None]
    return min(present) if present else None


class SQLiteDatabase(Database):
    """One SQLite file, one connection on one thread of its own (a
    one-worker executor). WAL lets readers in other hub processes go on
    while one writes, and the busy timeout waits out another process's
    write on that thread."""

    dialect = "sqlite"

    def __init__(self, path: Path, busy_timeout: float = BUSY_TIMEOUT) -> None:
        super().__init__(str(path))
        self.path = path
        self._busy_timeout = busy_timeout
        self._thread = ThreadPoolExecutor(1, thread_name_prefix=f"db-{path.name}")
        self._connection: sqlite3.Connection | None = None

    def _connect(self) -> sqlite3.Connection:
        if self._connection is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: no implicit BEGIN; transaction() says BEGIN and COMMIT itself.
            connection = sqlite3.connect(
                self.path, timeout=self._busy_timeout, isolation_level=None, check_same_thread=False
            )
            self._wal(connection)
            # PostgreSQL's names for the two-argument MAX and MIN, so features write one SQL.
            connection.create_function("greatest", -1, _greatest, deterministic=True)
            connection.create_function("least", -1, _least, deterministic=True)
            self._connection = connection
        return self._connection

    def _wal(self, connection: sqlite3.Connection) -> None:
        """Switch the file to write-ahead logging. Two processes opening a new
        file at once both try it, and SQLite answers the loser "database is
        locked" at once, without its busy handler: wait it out here instead."""
        deadline = time.monotonic() + self._busy_timeout
        while True:
            try:
                connection.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    async def _on_thread(self, work: Callable[[sqlite3.Connection], T]) -> T:
        def run() -> T:
            try:
                return work(self._connect())
            except sqlite3.Error as exc:
                raise DatabaseError(f"{self.path.name}: {exc}") from exc

        return await asyncio.get_running_loop().run_in_executor(self._thread, run)

    async def _run_unlocked(self, sql: str, args: Args | list[Args], fetch: Fetch, many: bool) -> Any:
        def work(c: sqlite3.Connection) -> Any:
            cursor = c.executemany(sql, args) if many else c.execute(sql, args)  # type: ignore[arg-type]
            if fetch == "one":
                return cursor.fetchone()
            return cursor.fetchall() if fetch == "all" else cursor.rowcount

        return await self._on_thread(work)

    async def _begin(self) -> None:
        # IMMEDIATE takes the write lock at once: two processes never both
        # read, then both fail to upgrade to writing.
        await self._on_thread(lambda c: c.execute("BEGIN IMMEDIATE"))

    async def _end(self, commit: bool) -> None:
        if commit:
            await self._on_thread(lambda c: c.execute("COMMIT"))
        else:
            await self._on_thread(lambda c: c.in_transaction and c.execute("ROLLBACK"))

    async def _columns(self, on: _Statements, table: str) -> set[str]:
        return {row[1] for row in await on.fetchall(f"PRAGMA table_info({quote(table)})")}

    async def tables(self) -> list[str]:
        rows = await self.fetchall(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name"
        )
        return [name for (name,) in rows]

    async def _disconnect(self) -> None:
        if self._connection is not None:
            connection, self._connection = self._connection, None
            await asyncio.get_running_loop().run_in_executor(self._thread, connection.close)
        self._thread.shutdown(wait=False)


# -- PostgreSQL ------------------------------------------------------------------------

#: The advisory lock an explicit transaction takes (any constant all hub
#: processes agree on; "hub" in ASCII).
_TRANSACTION_LOCK = 0x687562

#: SQLite's type names in a table definition, as PostgreSQL names the same
#: thing. SQLite's INTEGER and REAL are 8 bytes; PostgreSQL's INTEGER is 4
#: and its REAL a 4-byte float, which would round a timestamp to minutes.
_TYPES = (
    (
        re.compile(r"\bINTEGER\s+PRIMARY\s+KEY\s+AUTOINCREMENT\b", re.I),
        "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY",
    ),
    (re.compile(r"\bINTEGER\b", re.I), "BIGINT"),
    (re.compile(r"\bREAL\b", re.I), "DOUBLE PRECISION"),
    (re.compile(r"\bBLOB\b", re.I), "BYTEA"),
)
_DDL = re.compile(r"^\s*(CREATE\s+TABLE|ALTER\s+TABLE)\b", re.I)
#: Quoted text and identifiers pass through untouched; a placeholder is `?`
#: or `:name` (not a `::` cast).
_TOKENS = re.compile(r"('(?:[^']|'')*'|\"(?:[^\"]|\"\")*\")|(::)|(\?)|:([A-Za-z_][A-Za-z0-9_]*)")


@lru_cache(maxsize=2048)
def postgres_sql(sql: str) -> tuple[str, tuple[str, ...] | None]:
    """The statement in PostgreSQL's form ($1, $2... placeholders) and, for
    named placeholders, the names in the order of their numbers."""
    ddl = bool(_DDL.match(sql))
    names: list[str] = []
    positional = 0
    out: list[str] = []
    at = 0

    def plain(text: str) -> str:
        if ddl:
            for pattern, replacement in _TYPES:
                text = pattern.sub(replacement, text)
        return text

    for match in _TOKENS.finditer(sql):
        out.append(plain(sql[at : match.start()]))
        at = match.end()
        quoted, cast, mark, name = match.groups()
        if quoted or cast:
            out.append(match.group(0))
        elif mark:
            positional += 1
            out.append(f"${positional}")
        else:
            if name not in names:
                names.append(name)
            out.append(f"${names.index(name) + 1}")
    out.append(plain(sql[at:]))
    if positional and names:
        raise DatabaseError(f"a statement mixes ? and :name placeholders: {sql}")
    return "".join(out), tuple(names) if names else None


def _postgres_args(names: tuple[str, ...] | None, args: Args) -> Sequence[Any]:
    if names is None:
        if isinstance(args, Mapping):
            if args:
                raise DatabaseError("a mapping of arguments needs :name placeholders")
            return ()
        return args
    if not isinstance(args, Mapping):
        raise DatabaseError("named placeholders need a mapping of arguments")
    return [args[name] for name in names]


class PostgresDatabase(Database):
    """A PostgreSQL database, one psycopg AsyncConnection per hub process in
    autocommit mode (a plain statement is its own transaction). A lost
    connection is dropped and the next statement connects again."""

    dialect = "postgresql"

    def __init__(self, url: str) -> None:
        super().__init__(redact_url(url))
        self._url = url
        self._connection: psycopg.AsyncConnection[Any] | None = None

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        if self._connection is None or self._connection.closed:
            try:
                self._connection = await psycopg.AsyncConnection.connect(
                    self._url,
                    autocommit=True,
                    cursor_factory=psycopg.AsyncRawCursor,
                    connect_timeout=CONNECT_TIMEOUT,
                )
            except psycopg.Error as exc:
                raise DatabaseError(f"{self.name}: cannot connect: {exc}".strip()) from exc
        return self._connection

    async def _run_unlocked(self, sql: str, args: Args | list[Args], fetch: Fetch, many: bool) -> Any:
        query, names = postgres_sql(sql)
        connection = await self._connect()
        try:
            async with connection.cursor() as cursor:
                if many:
                    await cursor.executemany(query, [_postgres_args(names, a) for a in args])  # type: ignore[union-attr]
                else:
                    await cursor.execute(query, _postgres_args(names, args))  # type: ignore[arg-type]
                if fetch == "one":
                    return await cursor.fetchone()
                return await cursor.fetchall() if fetch == "all" else cursor.rowcount
        except psycopg.Error as exc:
            raise DatabaseError(f"{self.name}: {str(exc).strip()}") from exc

    async def _begin(self) -> None:
        await self._run_unlocked("BEGIN", (), "rowcount", False)
        await self._run_unlocked("SELECT pg_advisory_xact_lock(?)", [_TRANSACTION_LOCK], "one", False)

    async def _end(self, commit: bool) -> None:
        if commit:
            await self._run_unlocked("COMMIT", (), "rowcount", False)
        elif self._connection is not None and not self._connection.closed:
            await self._run_unlocked("ROLLBACK", (), "rowcount", False)

    async def _columns(self, on: _Statements, table: str) -> set[str]:
        rows = await on.fetchall(
            "SELECT column_name FROM information_schema.columns"
            " WHERE table_schema = current_schema() AND table_name = ?",
            [table],
        )
        return {name for (name,) in rows}

    async def tables(self) -> list[str]:
        rows = await self.fetchall(
            "SELECT table_name FROM information_schema.tables"
            " WHERE table_schema = current_schema() AND table_type = 'BASE TABLE' ORDER BY table_name"
        )
        return [name for (name,) in rows]

    async def resync_identity(self, tx: Transaction, table: str) -> None:
        rows = await tx.fetchall(
            "SELECT column_name FROM information_schema.columns"
            " WHERE table_schema = current_schema() AND table_name = ? AND is_identity = 'YES'",
            [table],
        )
        for (column,) in rows:
            await tx.fetchone(
                f"SELECT setval(pg_get_serial_sequence(?, ?), COALESCE(MAX({quote(column)}), 0) + 1, false)"
                f" FROM {quote(table)}",
                [quote(table), column],
            )

    async def _disconnect(self) -> None:
        if self._connection is not None:
            connection, self._connection = self._connection, None
            await connection.close()


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
        # Departments beside the sites, imported with the same file.
        (
            """CREATE TABLE IF NOT EXISTS departments (
                position INTEGER PRIMARY KEY,
                id TEXT NOT NULL UNIQUE,
                site_id TEXT NOT NULL,
                kind TEXT NOT NULL,
                name TEXT NOT NULL,
                name_en TEXT NOT NULL DEFAULT ''
            )""",
        ),
    ),
)


class SiteStore(Tables):
    migrations = SITES

    async def site_tree(self) -> SiteTree | None:
        rows = await self.db.fetchall("SELECT id, name, level, parent, name_en FROM sites ORDER BY position")
        if not rows:
            return None
        departments = await self.db.fetchall(
            "SELECT id, site_id, kind, name, name_en FROM departments ORDER BY position"
        )
        return SiteTree([Site(*row) for row in rows], [Department(*row) for row in departments])

    async def replace_sites(self, tree: SiteTree) -> None:
        """Import a site tree and its departments, replacing the stored ones in one transaction."""
        async with self.db.transaction() as tx:
            await tx.execute("DELETE FROM sites")
            await tx.execute("DELETE FROM departments")
            await tx.executemany(
                "INSERT INTO sites (position, id, name, name_en, level, parent) VALUES (?, ?, ?, ?, ?, ?)",
                [(i, s.id, s.name, s.name_en, s.level, s.parent) for i, s in enumerate(tree)],
            )
            departments = tree.departments()
            if departments:
                await tx.executemany(
                    "INSERT INTO departments (position, id, site_id, kind, name, name_en) VALUES (?, ?, ?, ?, ?, ?)",
                    [(i, d.id, d.site_id, d.kind, d.name, d.name_en) for i, d in enumerate(departments)],
                )
