"""The command-centre console: live status of a branch of the site tree and
the operators' saved video-wall layouts.

Status is computed from a fixed handful of live-state reads (presence,
active rooms, opened rooms, streams, cameras, alerts) whatever the number of
sites, then rolled up bottom-up over the branch.

Definitions (docs/operate.md repeats them):
- a site's *connections* ("terminals online") are the open event WebSockets
  of users whose home is that site, by role (presence);
- a room is *in session* when someone is in it; a site is in session when
  one of its rooms is;
- a site is *online* when it has a connection or is in session (a WHIP-only
  publisher, e.g. a hardware terminal, has no WebSocket but sits in a room);
- a camera is *in alarm* when an active alert names it (or its stream);
- a department beside a site is *online* when one of its people has an
  event socket open (their presence counts under the department's id).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from hub.core.access import Forbidden, can_reach_site
from hub.core.livestate import Record
from hub.core.rooms import NotFound, Rooms
from hub.core.store import Database, Migrations, Tables
from hub.core.tokens import Claims
from hub.monitoring.presence import KIND as PRESENCE
from hub.monitoring.presence import by_role

#: Largest wall: 8 x 8 panes.
MAX_GRID = 64
MAX_LAYOUTS = 50
MAX_PATROL_FEEDS = 500

Ident = Annotated[str, Field(min_length=1, max_length=100)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Feed(_Strict):
    """What a pane shows: a stream, a camera, or a site (its first live stream)."""

    stream_id: Ident | None = None
    camera_id: Ident | None = None
    site_id: Ident | None = None

    @model_validator(mode="after")
    def _one_source(self) -> Feed:
        if sum(v is not None for v in (self.stream_id, self.camera_id, self.site_id)) != 1:
            raise ValueError("a feed names exactly one of stream_id, camera_id, site_id")
        return self


class Patrol(_Strict):
    feeds: list[Feed] = Field(default_factory=list, max_length=MAX_PATROL_FEEDS)
    seconds: int = Field(default=10, ge=1, le=3600)


class Layout(_Strict):
    name: str = Field(min_length=1, max_length=64)
    grid: int = Field(ge=1, le=MAX_GRID)
    #: One entry per pane, in reading order; null leaves a pane empty.
    panes: list[Feed | None] = Field(default_factory=list, max_length=MAX_GRID)
    patrol: Patrol | None = None

    @model_validator(mode="after")
    def _square(self) -> Layout:
        side = round(self.grid**0.5)
        if side * side != self.grid:
            raise ValueError("grid must be a square number of panes (1, 4, 9, 16, ...)")
        if len(self.panes) > self.grid:
            raise ValueError("more panes than the grid holds")
        return self


class Layouts(_Strict):
    layouts: list[Layout] = Field(default_factory=list, max_length=MAX_LAYOUTS)
    #: The layout to open with.
    current: str | None = Field(default=None, max_length=64)

    @model_validator(mode="after")
    def _names(self) -> Layouts:
        names = [layout.name for layout in self.layouts]
        if len(set(names)) != len(names):
            raise ValueError("layout names must be unique")
        if self.current is not None and self.current not in names:
            raise ValueError("current must name one of the layouts")
        return self


MIGRATIONS = Migrations(
    "console",
    (
        (
            """CREATE TABLE IF NOT EXISTS console_layouts (
                "user" TEXT PRIMARY KEY,
                body TEXT NOT NULL,
                updated_at REAL NOT NULL
            )""",
        ),
    ),
)


class LayoutStore(Tables):
    """Each user's wall layouts, one JSON document per user."""

    migrations = MIGRATIONS

    async def get(self, user: str) -> Layouts:
        row = await self.db.fetchone('SELECT body FROM console_layouts WHERE "user" = ?', (user,))
        return Layouts.model_validate_json(row[0]) if row else Layouts()

    async def put(self, user: str, layouts: Layouts) -> None:
        await self.db.execute(
            'INSERT INTO console_layouts ("user", body, updated_at) VALUES (?, ?, ?)'
            ' ON CONFLICT ("user") DO UPDATE SET body = excluded.body, updated_at = excluded.updated_at',
            (user, layouts.model_dump_json(exclude_none=True), time.time()),
        )


def _add(into: dict[str, int], counts: dict[str, int]) -> None:
    for key, n in counts.items():
        into[key] += n


class Console:
    def __init__(self, rooms: Rooms, db: Database) -> None:
        self.rooms = rooms
        self.tree = rooms.tree
        self.state = rooms.state
        self.layouts = LayoutStore(db)

    async def start(self) -> None:
        await self.layouts.open()

    async def status(self, claims: Claims, root_id: str | None = None, compact: bool = False) -> Record:
        """Live status of every site of the branch under `root_id` (default:
        the caller's home site), with per-branch rollups; or, `compact`, only
        the sites with something live, without rollups, each room with the ids
        of its participants and each alert named: what a console needs to apply
        the event socket's deltas itself (web/js/console.js rolls up)."""
        root_id = self._reachable(claims, root_id)
        branch, site_rows, named, opened_rooms = await self._rows(root_id)
        if compact:
            in_branch = set(site_rows)
            rooms = [
                {k: room.get(k, "") for k in ("id", "site_id", "kind", "title")}
                for room in opened_rooms
                if room["site_id"] in in_branch
            ]
            sites = await self._compact(site_rows, named)
            # A department's row (its id, its connections) only while someone of it is online.
            sites += [
                {"id": d["id"], "connections": d["connections"]}
                for row in site_rows.values()
                for d in row["departments"]
                if d["online"]
            ]
            return {"root": root_id, "at": time.time(), "compact": True, "opened": rooms, "sites": sites}
        self._roll_up(branch, site_rows)
        return {"root": root_id, "at": time.time(), "sites": [site_rows[s.id] for s in branch]}

    async def branch(self, claims: Claims, site_id: str | None = None) -> Record:
        """Counts per branch, children on demand: the site (default: the
        caller's home site) and each of its children, named, with how many
        children each has, the counts over its branch (the rollup) and its
        own live fields as the compact status gives them. A console of a big
        tree loads this for its root, then for each branch an operator opens,
        and changes the counts by the event socket's deltas (docs/api.md)."""
        site_id = self._reachable(claims, site_id)
        branch, site_rows, named, opened_rooms = await self._rows(site_id)
        self._roll_up(branch, site_rows)
        shown = [site_id, *self.tree.children(site_id)]
        live = {row["id"]: row for row in await self._compact({i: site_rows[i] for i in shown}, named)}
        entries = []
        for shown_id in shown:
            site = self.tree.get(shown_id)
            assert site is not None
            entries.append(
                site.to_json()
                | {
                    "children": len(self.tree.children(site.id)),
                    "counts": site_rows[site.id]["rollup"],
                    "departments": site_rows[site.id]["departments"],
                }
                | live.get(site.id, {})
            )
        shown_set = set(shown)
        rooms = [
            {k: room.get(k, "") for k in ("id", "site_id", "kind", "title")}
            for room in opened_rooms
            if room["site_id"] in shown_set
        ]
        return {"root": site_id, "at": time.time(), "site": entries[0], "children": entries[1:], "opened": rooms}

    def _reachable(self, claims: Claims, root_id: str | None) -> str:
        root_id = root_id or claims.site
        if self.tree.get(root_id) is None:
            raise NotFound(f"no site {root_id}")
        if not can_reach_site(self.tree, claims, root_id):
            raise Forbidden(f"site {root_id} is outside your jurisdiction")
        return root_id

    async def _rows(self, root_id: str) -> tuple[list[Any], dict[str, Record], dict[str, list[Record]], list[Record]]:
        """Every site row of the branch (its live fields, `online`, `in_session`),
        its alerts named per site, and every opened room."""
        branch = self.tree.jurisdiction(root_id)
        in_branch = {s.id for s in branch}
        state = self.state

        # One after the other, not gathered: in memory none of them yields, so
        # with the event sequence number read just before (signaling/console.py)
        # they are one snapshot, and a console changing counts by deltas
        # counts no change twice. (With Redis, six round trips.)
        presence = by_role(await state.records(PRESENCE))
        active = await state.active_rooms()
        opened_rooms = await state.rooms()
        streams = await state.all_streams()
        cameras = await state.records("camera")
        alerts = await state.records("alert")
        opened = {r["id"]: r for r in opened_rooms}

        site_rows: dict[str, Record] = {}
        none: Counter[str] = Counter()  # one for every site without connections, not one each
        for site in branch:
            connections = presence.get(site.id, none)
            site_rows[site.id] = {
                "id": site.id,
                "connections": dict(connections),
                "terminals": sum(connections.values()),
                "rooms": [],
                "streams": [],
                "cameras": [],
                "alerts": 0,
            }

        for room_id, count in active.items():
            site = self.tree.site_of_room(room_id)
            room = opened.get(room_id) or (
                {"id": room_id, "site_id": site.id, "kind": "standing", "title": ""} if site else None
            )
            if room is None or room["site_id"] not in in_branch:
                continue
            site_rows[room["site_id"]]["rooms"].append(
                {"id": room_id, "kind": room["kind"], "title": room.get("title", ""), "participants": count}
            )
        for stream in streams:
            room = opened.get(stream["room_id"])
            site = room["site_id"] if room else getattr(self.tree.site_of_room(stream["room_id"]), "id", None)
            if site in in_branch:
                site_rows[site]["streams"].append(
                    {k: stream.get(k) for k in ("id", "room_id", "kind", "name", "user", "site_id")}
                )

        alarmed: set[str] = set()
        named: dict[str, list[Record]] = {}
        for key, alert in alerts.items():
            if alert.get("site_id") in in_branch:
                site_rows[alert["site_id"]]["alerts"] += 1
                named.setdefault(alert["site_id"], []).append(
                    {"id": alert.get("id", key)} | {k: alert[k] for k in ("camera_id", "stream_id") if alert.get(k)}
                )
                alarmed.update(str(alert[k]) for k in ("camera_id", "stream_id") if alert.get(k))
        for key, camera in cameras.items():
            if camera.get("site_id") not in in_branch:
                continue
            camera_id = camera.get("id", key)
            site_rows[camera["site_id"]]["cameras"].append(
                {
                    "id": camera_id,
                    "name": camera.get("name", camera_id),
                    "status": camera.get("status", "offline"),
                    "stream_id": camera.get("stream_id"),
                    "alarm": camera_id in alarmed or camera.get("stream_id") in alarmed,
                }
            )

        for row in site_rows.values():
            row["rooms"].sort(key=lambda r: (r["kind"] != "standing", r["id"]))
        # Departments beside each site: online while one of their people has an event socket open.
        for site in branch:
            site_rows[site.id]["departments"] = [
                d.to_json() | {"connections": dict(presence.get(d.id, {})), "online": d.id in presence}
                for d in self.tree.departments(site.id)
            ]
        return branch, site_rows, named, opened_rooms

    async def _compact(self, rows: dict[str, Record], alerts: dict[str, list[Record]]) -> list[Record]:
        """The rows with anything live, empty fields left out; rooms list their participants' ids."""
        fields = ("connections", "rooms", "streams", "cameras")
        live = [row for row in rows.values() if row["id"] in alerts or any(row[k] for k in fields)]
        rooms = [room for row in live for room in row["rooms"]]
        people = await asyncio.gather(*(self.state.participants(room["id"]) for room in rooms))
        for room, participants in zip(rooms, people, strict=True):
            room["participants"] = sorted(p["id"] for p in participants)
        out = []
        for row in live:
            compact = {"id": row["id"]} | {k: row[k] for k in fields if row[k]}
            out.append(compact | ({"alerts": alerts[row["id"]]} if row["id"] in alerts else {}))
        return out

    def _roll_up(self, branch: list[Any], rows: dict[str, Record]) -> None:
        """Fill each site's "rollup": counts over it and everything below.
        `branch` lists parents before children, so walking it backwards
        finishes every child before its parent."""
        below: dict[str, dict[str, int]] = {}  # site id -> sums over its children's branches
        for site in reversed(branch):
            row = rows[site.id]
            row["in_session"] = bool(row["rooms"])
            row["online"] = row["terminals"] > 0 or row["in_session"]
            cameras = row["cameras"]
            total = {
                "sites": 1,
                "sites_online": int(row["online"]),
                "sites_in_session": int(row["in_session"]),
                "villages": int(site.level == "village"),
                "villages_online": int(site.level == "village" and row["online"]),
                "rooms_in_session": len(row["rooms"]),
                "participants": sum(r["participants"] for r in row["rooms"]),
                "terminals": row["terminals"],
                "streams": len(row["streams"]),
                "cameras": len(cameras),
                "cameras_online": sum(c["status"] == "online" for c in cameras),
                "cameras_offline": sum(c["status"] == "offline" for c in cameras),
                "cameras_alarm": sum(c["alarm"] for c in cameras),
                "alerts": row["alerts"],
            }
            _add(total, below.pop(site.id, {}))
            row["rollup"] = total
            if site.parent is not None and site.parent in rows:
                _add(below.setdefault(site.parent, dict.fromkeys(total, 0)), total)

    # -- layouts -----------------------------------------------------------------

    async def get_layouts(self, claims: Claims) -> Record:
        return json.loads((await self.layouts.get(claims.user)).model_dump_json(exclude_none=True))

    async def put_layouts(self, claims: Claims, body: dict[str, Any]) -> Record:
        """Replace the caller's layouts (validated: ValidationError → 400)."""
        layouts = Layouts.model_validate(body)
        await self.layouts.put(claims.user, layouts)
        return json.loads(layouts.model_dump_json(exclude_none=True))
