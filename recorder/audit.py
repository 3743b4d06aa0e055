"""Audit rows about live feeds: every WHEP view and the snapshots fetched.

A view's row is written when the view starts, so a killed hub still leaves
the fact of it (with no end), and is given its end when the viewer's
subscription ends, whatever ended it: DELETE, a failed connection, the stream
ending, the hub shutting down.

A console fetches a fresh thumbnail of every feed on its screen each
snapshot period. One row per fetch would write ~10 rows a second for one
console watching 100 feeds; instead one user's fetches of one stream less
than `merge_seconds` apart extend one row: its `at` is the first fetch, its
`ended_at` the latest, its detail the count. The row is written at the first
fetch and brought up to date at most every `write_seconds` and when the
hub stops (fewer writes for the store's one writer thread to queue): a
killed hub loses at most that much of a run's count, never the fact of it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from hub.core.records import Stream
from hub.core.tokens import Claims

from .catalogue import Catalogue

#: Fetches of one stream by one user closer together than this share a row.
SNAPSHOT_MERGE_SECONDS = 60.0
#: Seconds between updates of a run's row while the fetches go on.
SNAPSHOT_WRITE_SECONDS = 10.0


@dataclass
class _Fetches:
    row_id: int
    last: float
    count: int
    #: `last` as the row holds it.
    written: float


def _fetch_detail(count: int) -> str:
    return f"{count} snapshot{'s' if count != 1 else ''}"


class LiveAudit:
    def __init__(
        self,
        catalogue: Catalogue,
        merge_seconds: float = SNAPSHOT_MERGE_SECONDS,
        write_seconds: float = SNAPSHOT_WRITE_SECONDS,
    ) -> None:
        self._catalogue = catalogue
        self._merge_seconds = merge_seconds
        self._write_seconds = write_seconds
        #: subscription id -> its row; None while the row is being written.
        self._views: dict[str, int | None] = {}
        self._fetches: dict[tuple[str, str, str, str], _Fetches] = {}

    async def view_started(self, claims: Claims, stream: Stream, site_id: str, subscription_id: str) -> None:
        """`site_id`: the site whose room holds the stream (whose auditors see the row)."""
        self._views[subscription_id] = None
        row_id = await self._catalogue.audit_live(
            claims.user, claims.role, claims.site, "view", stream["id"], stream["room_id"], site_id, subscription_id
        )
        if subscription_id in self._views:
            self._views[subscription_id] = row_id
        else:  # the view ended while its row was being written
            await self._catalogue.audit_until(row_id, time.time())

    async def view_ended(self, subscription_id: str) -> None:
        """The Router's `on_view_ended`: every way a view ends passes here."""
        row_id = self._views.pop(subscription_id, None)
        if row_id is not None:
            await self._catalogue.audit_until(row_id, time.time())

    async def snapshot_fetched(self, claims: Claims, stream: Stream, site_id: str) -> None:
        now = time.time()
        key = (claims.user, claims.role, claims.site, stream["id"])
        fetches = self._fetches.get(key)
        if fetches is not None and now - fetches.last < self._merge_seconds:
            fetches.last, fetches.count = now, fetches.count + 1
            if now - fetches.written >= self._write_seconds:
                await self._write(fetches)
            return
        # A new row: the runs that can no longer be extended get their last count.
        for stale in [k for k, f in self._fetches.items() if now - f.last >= self._merge_seconds]:
            await self._write(self._fetches.pop(stale))
        row_id = await self._catalogue.audit_live(
            claims.user,
            claims.role,
            claims.site,
            "snapshot",
            stream["id"],
            stream["room_id"],
            site_id,
            _fetch_detail(1),
            at=now,
            ended_at=now,
        )
        self._fetches[key] = _Fetches(row_id, now, 1, written=now)

    async def _write(self, fetches: _Fetches) -> None:
        if fetches.written < fetches.last:
            await self._catalogue.audit_until(fetches.row_id, fetches.last, _fetch_detail(fetches.count))
            fetches.written = fetches.last

    async def close(self) -> None:
        """Bring every run's row up to date (the hub is stopping)."""
        for fetches in self._fetches.values():
            await self._write(fetches)
        self._fetches.clear()
