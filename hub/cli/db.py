"""`python -m hub db upgrade | copy`: bring a database to this code's schema,
or move every durable record from one database into another."""

from __future__ import annotations

from hub.core.store import SITES, Database, DatabaseError, Migrations, quote, quoted
from hub.monitoring import console
from hub.workflows import cameras, cases, dispatch, training
from recorder import catalogue

#: Every feature's schema; each service migrates its own at start, `db
#: upgrade` all of them at once.
FEATURES: tuple[Migrations, ...] = (
    SITES,
    cases.MIGRATIONS,
    training.MIGRATIONS,
    dispatch.MIGRATIONS,
    cameras.MIGRATIONS,
    console.MIGRATIONS,
    catalogue.MIGRATIONS,
)
#: Rows inserted per statement batch while copying.
COPY_BATCH = 1000


async def upgrade(db: Database) -> dict[str, int]:
    """Run every feature's missing steps; how many ran, by feature."""
    return {m.feature: await db.migrate(m) for m in FEATURES}


async def copy(source: Database, target: Database) -> dict[str, int]:
    """Copy every table's rows from `source` into `target`, which must hold
    no records yet (only what `upgrade` made). Both are upgraded first, so a
    data directory of older code arrives in this code's schema. The copy is
    one transaction on the target: it lands whole or not at all. Returns the
    rows copied, by table."""
    await upgrade(source)
    await upgrade(target)
    tables = [t for t in await source.tables() if t != "schema_migrations"]
    missing = sorted(set(tables) - set(await target.tables()))
    if missing:
        raise DatabaseError(f"{target.name} has no table {', '.join(missing)}: is it another application's database?")
    copied: dict[str, int] = {}
    async with target.transaction() as tx:
        for table in tables:
            if await tx.fetchone(f"SELECT 1 FROM {quote(table)} LIMIT 1"):
                raise DatabaseError(
                    f"{target.name}: table {table} already has rows; db copy fills an empty database"
                    " (one that only `db upgrade` made)"
                )
        for table in tables:
            columns = sorted(await source.columns(table))
            lacking = set(columns) - await tx.columns(table)
            if lacking:
                raise DatabaseError(f"{target.name}: table {table} lacks {', '.join(sorted(lacking))}")
            names = quoted(columns)
            rows = await source.fetchall(f"SELECT {names} FROM {quote(table)}")
            insert = f"INSERT INTO {quote(table)} ({names}) VALUES ({', '.join('?' * len(columns))})"
            for start in range(0, len(rows), COPY_BATCH):
                await tx.executemany(insert, rows[start : start + COPY_BATCH])
            await target.resync_identity(tx, table)
            copied[table] = len(rows)
    return copied
