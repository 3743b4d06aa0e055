"""Presence: which sites have someone connected right now.

Every event WebSocket counts as one connection of its user's home site: a
named record (kind "presence", keyed by a connection id) lives while the
socket is open, and once more under the site's own kind ("presence@<site>"),
so that counting one site's connections reads that site's records only, not
every connection of the tree. When a site's count changes, the operators
whose jurisdiction covers it get a "presence" event with the site's
connections by role. A department's people count under the department's id
(their home); its presence event names the site it sits beside
(`beside`) and goes to whoever covers that site, for the console's tree.
Records of a hub process
that died without closing its sockets are swept once its heartbeat expires.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections import Counter

from hub.core.access import room_bound
from hub.core.livestate import LiveState, Record, Unavailable
from hub.core.sites import SiteTree
from hub.core.tokens import Claims

KIND = "presence"


class Presence:
    def __init__(self, state: LiveState, node_id: str, tree: SiteTree) -> None:
        self.state = state
        self.node_id = node_id
        self.tree = tree
        #: This process's open connections by key: written back by restore().
        self._mine: dict[str, Record] = {}
        state.restorers.append(self.restore)

    async def counts(self) -> Counter[str]:
        """Connections online per home site."""
        return Counter(r["site_id"] for r in (await self.state.records(KIND)).values())

    async def connect(self, claims: Claims) -> str | None:
        """Mark a connection of the caller's home site online; returns its key.
        Guests and other room-bound tokens are not counted: they are visitors
        of a room, not a site."""
        if room_bound(claims):
            return None
        key = f"c-{secrets.token_hex(8)}"
        record = {"site_id": claims.site, "user": claims.user, "role": claims.role, "node": self.node_id}
        self._mine[key] = record = record | {"since": time.time()}
        # A socket opened while shared live state is down still counts: restore() writes it.
        with contextlib.suppress(Unavailable):
            await self._write(key, record)
            await self._announce(claims.site, change=1)
        return key

    async def disconnect(self, key: str | None) -> None:
        if key is None:
            return
        self._mine.pop(key, None)
        with contextlib.suppress(Unavailable):  # restore() removes the record later
            record = await self._forget(key)
            if record is not None:
                await self._announce(record["site_id"], change=-1)

    async def restore(self) -> None:
        """Write back this process's connections that shared live state lost
        (both the record and its site's), remove those it holds under this
        process's name that closed meanwhile, and announce the sites whose
        count changed."""
        stored = await self.state.records(KIND)
        sites: set[str] = set()
        for key, record in tuple(self._mine.items()):
            if key not in stored:
                await self._write(key, record)
                sites.add(record["site_id"])
        for key, record in stored.items():
            if record.get("node") == self.node_id and key not in self._mine:
                if await self._forget(key) is not None:
                    sites.add(record["site_id"])
        for site_id in sorted(sites):
            await self._announce(site_id)

    async def _write(self, key: str, record: Record) -> None:
        await self.state.put_record(_site_kind(record["site_id"]), key, record)
        await self.state.put_record(KIND, key, record)

    async def _forget(self, key: str) -> Record | None:
        record = await self.state.delete_record(KIND, key)
        if record is not None:
            await self.state.delete_record(_site_kind(record["site_id"]), key)
        return record

    async def _announce(self, site_id: str, change: int | None = None) -> None:
        """Tell the site's operators its connections; `change` (one connection
        more or less) adds what the count was before it ("was"), from which a
        console that holds only counts per branch changes them by the delta.
        Exact with one process (nothing runs between the write and this
        count); with several, two changes of one site at the same instant may
        both count the other's, which the console's next branch load mends."""
        connections = Counter(r["role"] for r in (await self.state.records(_site_kind(site_id))).values())
        online = sum(connections.values())
        event: Record = {"type": "presence", "site_id": site_id, "online": online, "connections": dict(connections)}
        if change is not None:
            event["was"] = max(0, online - change)
        event["to"] = {"covering": site_id}
        if (department := self.tree.department(site_id)) is not None:
            event |= {"beside": department.site_id, "to": {"covering": department.site_id}}
        await self.state.emit(event)

    async def sweep(self) -> int:
        """Drop the connections of hub processes that are no longer running;
        returns how many (hub/cli/serve.py runs it beside Rooms.sweep)."""
        alive = await self.state.live_nodes()
        swept = 0
        sites: set[str] = set()
        for key, record in (await self.state.records(KIND)).items():
            if record.get("node") not in alive and await self._forget(key) is not None:
                swept += 1
                sites.add(record["site_id"])
        for site_id in sorted(sites):
            await self._announce(site_id)
        return swept


def _site_kind(site_id: str) -> str:
    return f"{KIND}@{site_id}"


def by_role(records: dict[str, Record]) -> dict[str, Counter[str]]:
    """Site id -> connections by role."""
    out: dict[str, Counter[str]] = {}
    for record in records.values():
        out.setdefault(record["site_id"], Counter())[record["role"]] += 1
    return out
