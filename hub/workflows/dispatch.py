"""Dispatch: emergency calls (一键求助) and convening sites (一键会商).

A call rings at every operator and administrator whose jurisdiction covers
the caller's site until one answers, the caller cancels or it times out.
Exactly one of those endings wins, across hub processes, because each is a
`claim_record` on the same key. The answer opens a call room at the
caller's site. Live calls sit in LiveState (shared by the hub processes);
every call is also written to SQLite for statistics and the "recent" list.

Convening opens a conference room at the operator's home site that admits
the chosen sites and invites each of them live (the `invitation` event the
home page already shows); the roll call tells who of each site has come.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from typing import Any

from hub.core.access import Forbidden, can_reach_site, room_bound
from hub.core.livestate import Record
from hub.core.rooms import NotFound, Rooms
from hub.core.store import Database, Migrations, Tables
from hub.core.tasks import cancel_and_wait
from hub.core.tokens import Claims

log = logging.getLogger(__name__)

#: Who is rung, and who may answer and convene.
RECEIVER_ROLES = ("operator", "admin")
#: Seconds a finished call stays in live state (GET /api/calls shows it).
RECENT_SECONDS = 600.0
#: How many finished calls GET /api/calls adds from the durable log.
RECENT_LIMIT = 50
#: Extra life of a site's "ringing" key past the ring time, so the key
#: outlives its call's timeout and only a dead hub's key expires by itself.
SITE_KEY_SLACK = 5.0
MAX_CONVENED_SITES = 200

# Live record kinds (LiveState named records).
CALL = "call"  # a call, by call id
SITE_CALL = "call-site"  # the ringing call of a site, by site id: one at a time
CALL_END = "call-end"  # how a call ended (answered, cancelled, missed): claimed once

MIGRATIONS = Migrations(
    "calls",
    (
        (
            """CREATE TABLE IF NOT EXISTS calls (
    id TEXT PRIMARY KEY,
    site_id TEXT NOT NULL,
    caller_user TEXT NOT NULL,
    caller_name TEXT NOT NULL,
    note TEXT NOT NULL DEFAULT '',
    at REAL NOT NULL,
    state TEXT NOT NULL,
    answered_user TEXT,
    answered_name TEXT,
    ended_at REAL,
    room_id TEXT
)""",
            "CREATE INDEX IF NOT EXISTS calls_site_time ON calls (site_id, at)",
        ),
    ),
)


class CallConflict(Exception):
    """The call has already ended (answered by someone else, cancelled,
    missed), or the site already has a ringing call: `call` says which."""

    def __init__(self, message: str, call: Record) -> None:
        super().__init__(message)
        self.call = call


class CallLog(Tables):
    """The durable record of calls: who called, who answered, when."""

    migrations = MIGRATIONS

    async def add(self, call: Record) -> None:
        await self.db.execute(
            "INSERT INTO calls (id, site_id, caller_user, caller_name, note, at, state) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (call["id"], call["site_id"], call["from"]["user"], call["from"]["name"], call["note"], call["at"])
            + (call["state"],),
        )

    async def end(self, call: Record) -> None:
        answered = call.get("answered_by") or {}
        await self.db.execute(
            "UPDATE calls SET state = ?, answered_user = ?, answered_name = ?, ended_at = ?, room_id = ? WHERE id = ?",
            (call["state"], answered.get("user"), answered.get("name"), call["ended_at"], call.get("room_id"))
            + (call["id"],),
        )

    async def recent(self, site_ids: list[str], limit: int) -> list[Record]:
        if not site_ids:
            return []
        marks = ", ".join("?" * len(site_ids))
        rows = await self.db.fetchall(
            "SELECT id, site_id, caller_user, caller_name, note, at, state, answered_user, answered_name,"
            f" ended_at, room_id FROM calls WHERE site_id IN ({marks}) ORDER BY at DESC LIMIT ?",
            [*site_ids, limit],
        )
        return [
            {
                "id": row[0],
                "site_id": row[1],
                "from": {"user": row[2], "name": row[3]},
                "note": row[4],
                "at": row[5],
                "state": row[6],
                "answered_by": {"user": row[7], "name": row[8]} if row[7] else None,
                "ended_at": row[9],
                "room_id": row[10],
            }
            for row in rows
        ]


class Dispatch:
    def __init__(self, rooms: Rooms, db: Database, ring_seconds: float) -> None:
        self.rooms = rooms
        self.tree = rooms.tree
        self.state = rooms.state
        self.ring_seconds = ring_seconds
        self.log = CallLog(db)
        self._timers: dict[str, asyncio.Task[None]] = {}

    async def start(self) -> None:
        await self.log.open()

    async def close(self) -> None:
        await cancel_and_wait(*self._timers.values())
        self._timers.clear()

    # -- emergency calls ----------------------------------------------------------

    def _ringing_to(self, site_id: str) -> Record:
        return {"covering": site_id, "roles": list(RECEIVER_ROLES)}

    async def call(self, claims: Claims, note: str = "") -> Record:
        """A call for help from the caller's home site; rings until answered,
        cancelled or `ring_seconds` pass."""
        if room_bound(claims):
            raise Forbidden("a guest or room-bound token cannot call for help")
        if claims.department is not None:
            # A call rings the caller's site and the levels above; a department has neither.
            raise Forbidden("a department user cannot call for help; its site's staff can")
        site = self.tree.get(claims.site)
        if site is None:
            raise NotFound(f"no site {claims.site}")
        call = {
            "id": f"call-{secrets.token_hex(6)}",
            "site_id": site.id,
            "site_name": site.name,
            "site_name_en": site.name_en,
            "from": {"user": claims.user, "name": claims.display_name()},
            "at": time.time(),
            "note": note,
            "state": "ringing",
        }
        if not await self.state.claim_record(
            SITE_CALL, site.id, {"call_id": call["id"]}, ttl=self.ring_seconds + SITE_KEY_SLACK
        ):
            held = await self.state.get_record(SITE_CALL, site.id)
            ringing = await self.state.get_record(CALL, held["call_id"]) if held else None
            raise CallConflict(f"site {site.id} already has a ringing call", ringing or {})
        await self.state.put_record(CALL, call["id"], call, ttl=self.ring_seconds + RECENT_SECONDS)
        await self.log.add(call)
        await self.state.emit({"type": "call-ringing", "call": call, "to": self._ringing_to(site.id)})
        self._timers[call["id"]] = asyncio.create_task(self._time_out(call["id"]))
        return call

    async def _reachable_call(self, claims: Claims, call_id: str) -> Record:
        call = await self.state.get_record(CALL, call_id)
        if call is None:
            raise NotFound(f"no call {call_id}")
        if not can_reach_site(self.tree, claims, call["site_id"]):
            raise Forbidden(f"call {call_id} is outside your jurisdiction")
        return call

    async def _claim_end(self, call: Record, state: str, by: Record | None) -> None:
        """Win the call's one ending or raise CallConflict naming the winner."""
        end = {"state": state, "by": by, "at": time.time()}
        if not await self.state.claim_record(CALL_END, call["id"], end, ttl=self.ring_seconds + RECENT_SECONDS):
            won = await self.state.get_record(CALL_END, call["id"]) or {}
            detail = {"answered": "answered by {}", "cancelled": "cancelled by {}", "missed": "missed{}"}
            who = (won.get("by") or {}).get("name", "")
            message = detail.get(won.get("state", ""), "ended{}").format(who)
            raise CallConflict(
                f"call {call['id']} was {message}",
                call | {"state": won.get("state", "ended"), "answered_by": won.get("by") if won else None},
            )

    async def answer(self, claims: Claims, call_id: str) -> tuple[Record, Record]:
        """Answer a ringing call: the first one wins and gets the call room."""
        if claims.role not in RECEIVER_ROLES:
            raise Forbidden("only operators and administrators answer calls")
        call = await self._reachable_call(claims, call_id)
        if call["from"]["user"] == claims.user:
            raise Forbidden("you cannot answer your own call")
        by = {"user": claims.user, "name": claims.display_name(), "site_id": claims.site}
        await self._claim_end(call, "answered", by)
        try:
            room = await self.rooms.open_room(
                claims, call["site_id"], "call", f"求助: {call['site_name']}", call_id=call_id
            )
        except BaseException:
            # No room, no answer: let the call ring on for someone else.
            await self.state.delete_record(CALL_END, call_id)
            raise
        call = await self._finish(call, "answered", answered_by=by, room_id=room["id"])
        event = {"call": call, "answered_by": by, "room_id": room["id"]}
        await self.state.emit({"type": "call-answered", **event, "to": self._ringing_to(call["site_id"])})
        await self.state.emit({"type": "call-answered", **event, "to": self._caller(call)})
        return call, room

    def _caller(self, call: Record) -> Record:
        return {"users": [call["from"]["user"]], "sites": [call["site_id"]]}

    async def cancel(self, claims: Claims, call_id: str) -> Record:
        call = await self._reachable_call(claims, call_id)
        if call["from"]["user"] != claims.user:
            raise Forbidden("only the caller may cancel a call")
        by = {"user": claims.user, "name": claims.display_name(), "site_id": claims.site}
        await self._claim_end(call, "cancelled", by)
        call = await self._finish(call, "cancelled")
        await self._announce_end(call, "call-ended")
        return call

    async def _time_out(self, call_id: str) -> None:
        await asyncio.sleep(self.ring_seconds)
        self._timers.pop(call_id, None)
        await self._miss(call_id)

    async def _miss(self, call_id: str) -> None:
        call = await self.state.get_record(CALL, call_id)
        if call is None or call["state"] != "ringing":
            return
        try:
            await self._claim_end(call, "missed", None)
        except CallConflict:
            return  # answered or cancelled meanwhile
        await self._announce_end(await self._finish(call, "missed"), "call-missed")

    async def _announce_end(self, call: Record, kind: str) -> None:
        await self.state.emit({"type": kind, "call": call, "to": self._ringing_to(call["site_id"])})
        await self.state.emit({"type": kind, "call": call, "to": self._caller(call)})

    async def _finish(self, call: Record, state: str, **fields: Any) -> Record:
        """Record a call's ending (its claim is already won) and free its site."""
        call = call | fields | {"state": state, "ended_at": time.time()}
        await self.state.put_record(CALL, call["id"], call, ttl=RECENT_SECONDS)
        held = await self.state.get_record(SITE_CALL, call["site_id"])
        if held is not None and held["call_id"] == call["id"]:
            await self.state.delete_record(SITE_CALL, call["site_id"])
        timer = self._timers.pop(call["id"], None)
        if timer is not None and timer is not asyncio.current_task():
            timer.cancel()
        await self.log.end(call)
        return call

    async def calls(self, claims: Claims) -> list[Record]:
        """Ringing and recent calls of the caller's jurisdiction, newest first."""
        if room_bound(claims):
            return []
        live = {
            key: call
            for key, call in (await self.state.records(CALL)).items()
            if can_reach_site(self.tree, claims, call["site_id"])
        }
        # A call whose hub process died rings on in live state: time it out here.
        for call in list(live.values()):
            if call["state"] == "ringing" and time.time() - call["at"] > self.ring_seconds + 1:
                await self._miss(call["id"])
                live[call["id"]] = await self.state.get_record(CALL, call["id"]) or call
        sites = [s.id for s in self.tree.jurisdiction(claims.site)]
        recent = await self.log.recent(sites, RECENT_LIMIT)
        for row in recent:
            if row["id"] not in live:
                site = self.tree.get(row["site_id"])
                names = {"site_name": site.name, "site_name_en": site.name_en} if site else {}
                live[row["id"]] = {"site_name": "", "site_name_en": ""} | row | names
        return sorted(live.values(), key=lambda c: c["at"], reverse=True)

    # -- convening ----------------------------------------------------------------

    async def convene(self, claims: Claims, title: str, sites: list[str]) -> Record:
        """Open a conference at the caller's home site and invite `sites` live."""
        if claims.role not in RECEIVER_ROLES:
            raise Forbidden("only operators and administrators convene sites")
        invited = list(dict.fromkeys(sites))
        if not invited:
            raise ValueError("choose at least one site")
        if len(invited) > MAX_CONVENED_SITES:
            raise ValueError(f"at most {MAX_CONVENED_SITES} sites")
        if claims.site in invited:
            raise ValueError("the conference is held at your own site; invite the sites below it")
        home = self.tree.get(claims.site)
        convener = {"user": claims.user, "name": claims.display_name(), "site_id": claims.site}
        # The invited may not see the convener's site in their own tree: name it.
        convener |= {"site_name": home.name, "site_name_en": home.name_en} if home else {}
        room = await self.rooms.open_room(
            claims, claims.site, "conference", title, admit=invited, invited=invited, convened_by=convener
        )
        for site in invited:
            # Downward: the invitation's sender names the convener's site, as convened_by does.
            await self.rooms.announce_invitation(claims, room, site, {"sites": [site]}, downward=True)
        return room

    async def rollcall(self, claims: Claims, room_id: str) -> Record:
        """Per invited site: who of it (or below it) is in the conference, since when."""
        if claims.role == "guest":
            raise Forbidden("guests cannot read a roll call")
        room = await self.rooms.room(claims, room_id)
        if room["kind"] != "conference":
            raise NotFound(f"room {room_id} is not a conference")
        participants = sorted(await self.state.participants(room_id), key=lambda p: p["joined_at"])
        out = []
        for site_id in room.get("invited", room.get("admit", [])):
            site = self.tree.get(site_id)
            present = [
                {"id": p["id"], "user": p["user"], "name": p["name"], "site_id": p["site_id"], "since": p["joined_at"]}
                for p in participants
                if self.tree.covers(site_id, p["site_id"])
            ]
            out.append(
                {
                    "site_id": site_id,
                    "name": site.name if site else site_id,
                    "name_en": site.name_en if site else "",
                    "joined": bool(present),
                    "since": present[0]["since"] if present else None,
                    "participants": present,
                }
            )
        return {"room_id": room_id, "title": room["title"], "sites": out}
