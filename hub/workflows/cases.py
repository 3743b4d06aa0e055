"""Mediation cases: a dispute worked at one site, escalated up the tree.

A case sits in the queue of one site (`site_id`); escalating moves it to the
parent site's queue and keeps everything it gathered: its history (every
change, who, when, from/to site) and its sessions (mediation rooms, each
with start/end times). Recordings of those rooms are found by room id in
the recorder's catalogue by the signaling layer (the hub does not import
the recorder).

Status and its allowed transitions (PATCH; escalation has its own call):

    open      -> mediating, closed
    mediating -> agreement, failed, closed
    failed    -> mediating, closed
    escalated -> mediating, closed
    agreement -> closed
    closed    -> (final)

Holding a session moves open/failed/escalated to mediating. Escalation is
allowed from open, mediating, failed and escalated, to the parent site; it
sets status "escalated". `result` keeps the outcome that counts in the
statistics: "agreement" or "failed" when the case reaches that status; it is
cleared when mediation resumes or the case is escalated, and kept on close.

Who: cases hold parties' names and phone numbers, so only mediators,
operators and admins see them. Escalation goes only upwards, so the sites a
case has been at are its origin and origin's ancestors: exactly the users
whose jurisdiction covers the origin may read it (levels above read cases
below, the origin keeps reading its escalated case, siblings never do).
Writing (status, sessions, escalation, referral) needs the case's current
site or a site above it.

Referral (警调对接, 诉调对接, 司法确认): a writer refers the case to a
department beside the case's current site or a site above it, saying what
is asked (ASKS) with a note. From then on the department's people read the
case with its history, sessions and recordings (hub.core.access.admitted on
the case's `departments`), enter its session rooms (they admit it), and
answer the referral once: accepted or declined, with an outcome and, for a
confirmation, a document number. Every referral and answer is a history
step. Nothing else of the case's site reaches the department.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from hub.core.access import Forbidden, admitted, can_reach_site, room_bound
from hub.core.livestate import EventFollower, Record
from hub.core.records import Event
from hub.core.rooms import NotFound, Rooms, _new_id
from hub.core.sites import Department
from hub.core.store import Database, Migrations, Tables, Transaction, quoted
from hub.core.tokens import Claims

DISPUTE_TYPES = ("family", "neighbour", "land", "wages", "contract", "other")
STATUSES = ("open", "mediating", "agreement", "failed", "escalated", "closed")
TRANSITIONS: dict[str, tuple[str, ...]] = {
    "open": ("mediating", "closed"),
    "mediating": ("agreement", "failed", "closed"),
    "failed": ("mediating", "closed"),
    "escalated": ("mediating", "closed"),
    "agreement": ("closed",),
    "closed": (),
}
ESCALATABLE = ("open", "mediating", "failed", "escalated")
#: A session may be held while the case is still being worked.
SESSION_STATUSES = ("open", "mediating", "failed", "escalated")
RESULTS = ("agreement", "failed")
#: Times an unversioned change is decided again after another process's write
#: got in first (each retry means one more write to the case meanwhile).
STALE_RETRIES = 3
#: Roles that read and work cases.
CASE_ROLES = ("admin", "operator", "mediator")
#: What a referral asks of a department.
ASKS = ("judicial_confirmation", "police_handling", "legal_advice", "petition_handling")
#: A department's answer to a referral.
DECISIONS = ("accepted", "declined")
#: A case may be referred while it is not closed.
REFERABLE = ("open", "mediating", "failed", "escalated", "agreement")

MIGRATIONS = Migrations(
    "cases",
    (
        (
            """CREATE TABLE IF NOT EXISTS cases (
    id TEXT PRIMARY KEY,
    site_id TEXT NOT NULL,
    origin_site_id TEXT NOT NULL,
    title TEXT NOT NULL,
    dispute_type TEXT NOT NULL,
    parties TEXT NOT NULL,
    summary TEXT NOT NULL DEFAULT '',
    status TEXT NOT NULL,
    result TEXT,
    outcome TEXT NOT NULL DEFAULT '',
    created_by TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
)""",
            "CREATE INDEX IF NOT EXISTS cases_origin ON cases (origin_site_id, created_at)",
            "CREATE INDEX IF NOT EXISTS cases_site ON cases (site_id)",
            """CREATE TABLE IF NOT EXISTS case_history (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    case_id TEXT NOT NULL,
    at REAL NOT NULL,
    "user" TEXT NOT NULL,
    role TEXT NOT NULL,
    action TEXT NOT NULL,
    from_status TEXT,
    to_status TEXT,
    from_site TEXT,
    to_site TEXT,
    room_id TEXT,
    note TEXT NOT NULL DEFAULT ''
)""",
            "CREATE INDEX IF NOT EXISTS case_history_case ON case_history (case_id, id)",
            """CREATE TABLE IF NOT EXISTS case_sessions (
    id TEXT PRIMARY KEY,
    case_id TEXT NOT NULL,
    room_id TEXT NOT NULL UNIQUE,
    site_id TEXT NOT NULL,
    admit TEXT NOT NULL,
    opened_by TEXT NOT NULL,
    opened_at REAL NOT NULL,
    started_at REAL,
    ended_at REAL
)""",
            "CREATE INDEX IF NOT EXISTS case_sessions_case ON case_sessions (case_id, opened_at)",
        ),
        # Every change of a case row counts up its version: a write names the
        # version it read, so of two hub processes changing one case at once
        # exactly one writes and the other learns so (no change lost silently).
        ("ALTER TABLE cases ADD COLUMN version INTEGER NOT NULL DEFAULT 1",),
        # Referrals to departments: the case keeps the departments it was
        # referred to (JSON list, read with the case for every access check);
        # each referral and its answer is a row, and history names them.
        (
            "ALTER TABLE cases ADD COLUMN departments TEXT NOT NULL DEFAULT '[]'",
            "ALTER TABLE case_history ADD COLUMN department TEXT",
            "ALTER TABLE case_history ADD COLUMN referral_id TEXT",
            """CREATE TABLE IF NOT EXISTS case_referrals (
    id TEXT PRIMARY KEY,
    case_id TEXT NOT NULL,
    department_id TEXT NOT NULL,
    department_kind TEXT NOT NULL,
    ask TEXT NOT NULL,
    note TEXT NOT NULL DEFAULT '',
    referred_by TEXT NOT NULL,
    from_site TEXT NOT NULL,
    referred_at REAL NOT NULL,
    decision TEXT,
    outcome TEXT NOT NULL DEFAULT '',
    document_no TEXT NOT NULL DEFAULT '',
    answered_by TEXT,
    answered_at REAL
)""",
            "CREATE INDEX IF NOT EXISTS case_referrals_case ON case_referrals (case_id, referred_at)",
            "CREATE INDEX IF NOT EXISTS case_referrals_department ON case_referrals (department_id, referred_at)",
        ),
    ),
)

CASE_COLUMNS = (
    "id",
    "site_id",
    "origin_site_id",
    "title",
    "dispute_type",
    "parties",
    "summary",
    "status",
    "result",
    "outcome",
    "created_by",
    "created_at",
    "updated_at",
    "version",
    "departments",
)
HISTORY_COLUMNS = (
    "at",
    "user",
    "role",
    "action",
    "from_status",
    "to_status",
    "from_site",
    "to_site",
    "room_id",
    "note",
    "department",
    "referral_id",
)
REFERRAL_COLUMNS = (
    "id",
    "case_id",
    "department_id",
    "department_kind",
    "ask",
    "note",
    "referred_by",
    "from_site",
    "referred_at",
    "decision",
    "outcome",
    "document_no",
    "answered_by",
    "answered_at",
)
SESSION_COLUMNS = ("id", "case_id", "room_id", "site_id", "admit", "opened_by", "opened_at", "started_at", "ended_at")


def works_cases(claims: Claims) -> bool:
    """Mediators, operators and admins with an ordinary (not room-bound) token."""
    return claims.role in CASE_ROLES and not room_bound(claims)


class Conflict(Exception):
    """The change is not allowed in the case's current state (HTTP 409);
    `case` is that state, where known."""

    def __init__(self, message: str, case: Record | None = None) -> None:
        super().__init__(message)
        self.case = case


class Stale(Conflict):
    """The case is no longer at the version the change was decided on."""


class CaseStore(Tables):
    """The three case tables."""

    migrations = MIGRATIONS

    async def insert(self, case: Record, history: Record) -> None:
        row = case | {
            "parties": json.dumps(case["parties"], ensure_ascii=False),
            "departments": json.dumps(case["departments"]),
        }
        async with self.db.transaction() as tx:
            await tx.execute(
                f"INSERT INTO cases ({', '.join(CASE_COLUMNS)}) VALUES ({', '.join('?' * len(CASE_COLUMNS))})",
                [row[c] for c in CASE_COLUMNS],
            )
            await self._add_history(tx, case["id"], history)

    async def update(
        self, case_id: str, version: int, changes: Record, history: Record, referral: Record | None = None
    ) -> bool:
        """Apply `changes` and count the version up, only if the row is still
        at `version` (two hub processes racing on one case: one wins, the
        other gets False); the history entry, and a referral (new or
        answered: written whole), commit with the change."""
        values = [json.dumps(v) if k == "departments" else v for k, v in changes.items()]
        sets = ", ".join(f"{k} = ?" for k in changes)
        async with self.db.transaction() as tx:
            changed = await tx.execute(
                f"UPDATE cases SET {sets}, version = version + 1 WHERE id = ? AND version = ?",
                [*values, case_id, version],
            )
            if changed != 1:
                return False
            await self._add_history(tx, case_id, history)
            if referral is not None:
                await tx.execute("DELETE FROM case_referrals WHERE id = ?", [referral["id"]])
                await tx.execute(
                    f"INSERT INTO case_referrals ({', '.join(REFERRAL_COLUMNS)})"
                    f" VALUES ({', '.join('?' * len(REFERRAL_COLUMNS))})",
                    [referral[c] for c in REFERRAL_COLUMNS],
                )
            return True

    async def referrals(self, case_ids: list[str]) -> dict[str, list[Record]]:
        """Each case's referrals, oldest first."""
        out: dict[str, list[Record]] = {c: [] for c in case_ids}
        if not case_ids:
            return out
        rows = await self.db.fetchall(
            f"SELECT {', '.join(REFERRAL_COLUMNS)} FROM case_referrals"
            f" WHERE case_id IN ({', '.join('?' * len(case_ids))}) ORDER BY referred_at, id",
            case_ids,
        )
        for row in rows:
            referral = dict(zip(REFERRAL_COLUMNS, row, strict=True))
            out[referral["case_id"]].append(referral)
        return out

    async def referred_to(self, department_id: str) -> list[str]:
        """Ids of the cases ever referred to a department."""
        rows = await self.db.fetchall(
            "SELECT DISTINCT case_id FROM case_referrals WHERE department_id = ?", [department_id]
        )
        return [row[0] for row in rows]

    @staticmethod
    async def _add_history(tx: Transaction, case_id: str, entry: Record) -> None:
        await tx.execute(
            f"INSERT INTO case_history (case_id, {quoted(HISTORY_COLUMNS)})"
            f" VALUES (?, {', '.join('?' * len(HISTORY_COLUMNS))})",
            [case_id, *(entry.get(c, "" if c == "note" else None) for c in HISTORY_COLUMNS)],
        )

    async def get(self, case_id: str) -> Record | None:
        rows = await self.select("WHERE id = ?", [case_id])
        return rows[0] if rows else None

    async def select(self, tail: str, args: list[Any]) -> list[Record]:
        rows = await self.db.fetchall(f"SELECT {', '.join(CASE_COLUMNS)} FROM cases {tail}", args)
        out = []
        for row in rows:
            case = dict(zip(CASE_COLUMNS, row, strict=True))
            case["parties"] = json.loads(case["parties"])
            case["departments"] = json.loads(case["departments"])
            out.append(case)
        return out

    async def history(self, case_ids: list[str]) -> dict[str, list[Record]]:
        out: dict[str, list[Record]] = {c: [] for c in case_ids}
        if not case_ids:
            return out
        rows = await self.db.fetchall(
            f"SELECT case_id, {quoted(HISTORY_COLUMNS)} FROM case_history"
            f" WHERE case_id IN ({', '.join('?' * len(case_ids))}) ORDER BY id",
            case_ids,
        )
        for case_id, *values in rows:
            out[case_id].append(dict(zip(HISTORY_COLUMNS, values, strict=True)))
        return out

    async def add_session(self, session: Record, history: Record) -> None:
        row = session | {"admit": json.dumps(session["admit"])}
        async with self.db.transaction() as tx:
            await tx.execute(
                f"INSERT INTO case_sessions ({', '.join(SESSION_COLUMNS)})"
                f" VALUES ({', '.join('?' * len(SESSION_COLUMNS))})",
                [row[c] for c in SESSION_COLUMNS],
            )
            await self._add_history(tx, session["case_id"], history)

    async def sessions(self, case_id: str) -> list[Record]:
        rows = await self.db.fetchall(
            f"SELECT {', '.join(SESSION_COLUMNS)} FROM case_sessions WHERE case_id = ? ORDER BY opened_at",
            [case_id],
        )
        out = []
        for row in rows:
            session = dict(zip(SESSION_COLUMNS, row, strict=True))
            session["admit"] = json.loads(session["admit"])
            out.append(session)
        return out

    async def has_session(self, room_id: str) -> bool:
        return await self.db.fetchone("SELECT 1 FROM case_sessions WHERE room_id = ?", [room_id]) is not None

    async def session_started(self, room_id: str, at: float) -> bool:
        """Someone is in the session's room: it started (once) and has not ended."""
        changed = await self.db.execute(
            "UPDATE case_sessions SET started_at = COALESCE(started_at, ?), ended_at = NULL WHERE room_id = ?",
            [at, room_id],
        )
        return changed == 1

    async def session_ended(self, room_id: str, at: float) -> bool:
        """The session's room emptied; a later join reopens it."""
        changed = await self.db.execute(
            "UPDATE case_sessions SET ended_at = ? WHERE room_id = ? AND started_at IS NOT NULL", [at, room_id]
        )
        return changed == 1


class Cases:
    """The case workflow; every method checks the caller itself."""

    def __init__(self, rooms: Rooms, db: Database) -> None:
        self.rooms = rooms
        self.tree = rooms.tree
        self.store = CaseStore(db)
        self._follower = EventFollower(rooms.state, self.on_event, "cases")

    async def start(self) -> None:
        await self.store.open()
        self._follower.start()

    async def close(self) -> None:
        await self._follower.stop()

    # -- permissions ---------------------------------------------------------

    def can_read(self, claims: Claims, case: Record) -> bool:
        """The rule of the case events' audience too (`_announce`: "covering"
        the origin, or "sites" the departments it was referred to; "roles"
        CASE_ROLES), so REST and the event socket agree."""
        return claims.role in CASE_ROLES and (
            can_reach_site(self.tree, claims, case["origin_site_id"])
            or admitted(self.tree, claims, case["departments"])
        )

    async def _readable(self, claims: Claims, case_id: str) -> Record:
        case = await self.store.get(case_id)
        if case is None:
            raise NotFound(f"no case {case_id}")
        if not self.can_read(claims, case):
            raise Forbidden(f"case {case_id} is outside your jurisdiction")
        return case

    async def _writable(self, claims: Claims, case_id: str, version: int | None = None) -> Record:
        """The case, if the caller may change it; `version`: the one the
        caller saw, refused (with the case as it is) if the case moved on."""
        case = await self._readable(claims, case_id)
        if not self.tree.covers(claims.site, case["site_id"]):
            raise Forbidden(f"case {case_id} is now handled at {case['site_id']}; only that site and above may act")
        if version is not None and version != case["version"]:
            raise Stale(f"case {case_id} is at version {case['version']}, not {version}; reload it", case)
        return case

    def _site_for_new_case(self, claims: Claims, site_id: str) -> None:
        if not works_cases(claims):
            raise Forbidden("only mediators, operators and administrators open cases")
        if self.tree.get(site_id) is None:
            raise NotFound(f"no site {site_id}")
        if not self.tree.covers(claims.site, site_id):
            raise Forbidden(f"site {site_id} is outside your jurisdiction")

    # -- reading -------------------------------------------------------------

    async def get(self, claims: Claims, case_id: str) -> Record:
        """A case with its history and sessions (oldest first) and what the caller may do."""
        case = await self._readable(claims, case_id)
        referrals = (await self.store.referrals([case_id]))[case_id]
        return case | {
            "history": (await self.store.history([case_id]))[case_id],
            "sessions": await self.store.sessions(case_id),
            "referrals": [self._named(r) for r in referrals],
            "actions": self.actions(claims, case, referrals),
            "sites": self.sites_of(case),
        }

    def _named(self, referral: Record) -> Record:
        """A referral with its department's names (its readers may not see the site it sits beside)."""
        department = self.tree.department(referral["department_id"])
        return referral | {"department": department.to_json() if department else None}

    def sites_of(self, case: Record) -> dict[str, Record]:
        """The sites the case has been at, by id, for naming them: a reader
        below the case's current site cannot look that site up otherwise."""
        return {s: site.to_json() for s in self._visited(case) if (site := self.tree.get(s)) is not None}

    def actions(self, claims: Claims, case: Record, referrals: Sequence[Record] = ()) -> Record:
        """What the caller may do with the case now (the page offers only these):
        `answer`, the ids of referrals its department has yet to answer."""
        answer = [r["id"] for r in referrals if r["decision"] is None and r["department_id"] == claims.department]
        if not self.tree.covers(claims.site, case["site_id"]):
            return {"statuses": [], "session": False, "escalate": False, "refer": False, "answer": answer}
        site = self.tree.get(case["site_id"])
        return {
            "statuses": list(TRANSITIONS[case["status"]]),
            "session": case["status"] in SESSION_STATUSES,
            "escalate": case["status"] in ESCALATABLE and site is not None and site.parent is not None,
            "refer": case["status"] in REFERABLE,
            "answer": answer,
        }

    async def search(
        self, claims: Claims, site: str | None = None, status: str | None = None, mine: bool = False
    ) -> list[Record]:
        """Cases the caller may read, newest first. `site`: cases that have
        been at a site of that branch (it must be in the caller's
        jurisdiction); `mine`: only the queue of the caller's own site."""
        if not works_cases(claims):
            raise Forbidden("only mediators, operators and administrators read cases")
        if status is not None and status not in STATUSES:
            raise ValueError(f"status must be one of {', '.join(STATUSES)}")
        if claims.department is not None:
            return await self._referred(claims.department, site, status)
        branch = site or claims.site
        if self.tree.get(branch) is None:
            raise NotFound(f"no site {branch}")
        if not self.tree.covers(claims.site, branch):
            raise Forbidden(f"site {branch} is outside your jurisdiction")
        ids = [s.id for s in self.tree.jurisdiction(branch)]
        # A case has been at a site of the branch iff its origin lies in the
        # branch: escalation only climbs, so every later site is an ancestor.
        where = [f"origin_site_id IN ({', '.join('?' * len(ids))})"]
        args: list[Any] = list(ids)
        if status is not None:
            where.append("status = ?")
            args.append(status)
        if mine:
            where.append("site_id = ?")
            args.append(claims.site)
        return await self.store.select(f"WHERE {' AND '.join(where)} ORDER BY created_at DESC", args)

    async def _referred(self, department_id: str, site: str | None, status: str | None) -> list[Record]:
        """A department's list: the cases referred to it, nothing of any site."""
        if site is not None and site != department_id:
            raise Forbidden(f"a department's people list the cases referred to it, not site {site}'s")
        ids = await self.store.referred_to(department_id)
        if not ids:
            return []
        where = [f"id IN ({', '.join('?' * len(ids))})"]
        args: list[Any] = list(ids)
        if status is not None:
            where.append("status = ?")
            args.append(status)
        return await self.store.select(f"WHERE {' AND '.join(where)} ORDER BY created_at DESC", args)

    async def granted_rooms(self, claims: Claims) -> set[str]:
        """The session rooms of the cases referred to the caller's department
        (their recordings are its to play); none for anyone else."""
        if claims.department is None or claims.role not in CASE_ROLES or room_bound(claims):
            return set()
        rooms: set[str] = set()
        for case_id in await self.store.referred_to(claims.department):
            rooms |= {s["room_id"] for s in await self.store.sessions(case_id)}
        return rooms

    async def in_period(self, sites: list[str], since: float, until: float) -> list[Record]:
        """Cases opened in [since, until) whose origin is one of `sites`, with
        their history (for statistics; the caller checked the branch)."""
        cases = await self.store.select(
            f"WHERE origin_site_id IN ({', '.join('?' * len(sites))}) AND created_at >= ? AND created_at < ?"
            " ORDER BY created_at",
            [*sites, since, until],
        )
        ids = [c["id"] for c in cases]
        history, referrals = await self.store.history(ids), await self.store.referrals(ids)
        return [c | {"history": history[c["id"]], "referrals": referrals[c["id"]]} for c in cases]

    # -- changes -------------------------------------------------------------

    async def open(
        self, claims: Claims, site_id: str, title: str, dispute_type: str, parties: list[Record], summary: str
    ) -> Record:
        self._site_for_new_case(claims, site_id)
        if dispute_type not in DISPUTE_TYPES:
            raise ValueError(f"dispute_type must be one of {', '.join(DISPUTE_TYPES)}")
        now = time.time()
        case = {
            "id": _new_id("case"),
            "site_id": site_id,
            "origin_site_id": site_id,
            "title": title,
            "dispute_type": dispute_type,
            "parties": parties,
            "summary": summary,
            "status": "open",
            "result": None,
            "outcome": "",
            "created_by": claims.user,
            "created_at": now,
            "updated_at": now,
            "version": 1,
            "departments": [],
        }
        await self.store.insert(case, self._entry(claims, "opened", now, to_status="open", to_site=site_id))
        await self._announce("case-updated", case)
        return case

    async def update(
        self, claims: Claims, case_id: str, status: str | None, outcome: str | None, version: int | None = None
    ) -> Record:
        """Change the status (along TRANSITIONS) and/or the outcome note;
        `version`: only if the case is still at that version."""
        return await self._decided(version, lambda: self._update(claims, case_id, status, outcome, version))

    async def _update(
        self, claims: Claims, case_id: str, status: str | None, outcome: str | None, version: int | None
    ) -> Record:
        case = await self._writable(claims, case_id, version)
        if case["status"] == "closed":
            raise Conflict(f"case {case_id} is closed", case)
        changes: Record = {}
        if status is not None and status != case["status"]:
            if status not in STATUSES:
                raise ValueError(f"status must be one of {', '.join(STATUSES)}")
            if status not in TRANSITIONS[case["status"]]:
                allowed = ", ".join(TRANSITIONS[case["status"]]) or "nothing"
                raise Conflict(f"a case that is {case['status']} may become {allowed}, not {status}", case)
            changes["status"] = status
            if status in RESULTS:
                changes["result"] = status
            elif status == "mediating":
                changes["result"] = None
        if outcome is not None and outcome != case["outcome"]:
            changes["outcome"] = outcome
        if not changes:
            return case
        now = time.time()
        changes["updated_at"] = now
        entry = self._entry(
            claims,
            "status" if "status" in changes else "outcome",
            now,
            from_status=case["status"],
            to_status=changes.get("status", case["status"]),
            note=changes.get("outcome", ""),
        )
        return await self._apply(case, changes, entry, "case-updated")

    async def hold_session(self, claims: Claims, case_id: str) -> tuple[Record, Record]:
        """Open the case's next mediation room at its current site; the sites
        it came from are admitted (each with its branch) and invited."""
        case = await self._writable(claims, case_id)
        if case["status"] not in SESSION_STATUSES:
            raise Conflict(f"a case that is {case['status']} holds no more sessions")
        below = self._visited(case)[:-1]
        room = await self.rooms.open_room(
            claims, case["site_id"], "mediation", case["title"], admit=below, case_id=case_id
        )
        if case["departments"]:  # admitted after the jurisdiction check, which no department passes
            room = await self.rooms.update_room(room["id"], {"admit": sorted({*below, *case["departments"]})}) or room
        now = time.time()
        session = {
            "id": _new_id("session"),
            "case_id": case_id,
            "room_id": room["id"],
            "site_id": case["site_id"],
            "admit": below,
            "opened_by": claims.user,
            "opened_at": now,
            "started_at": None,
            "ended_at": None,
        }
        await self.store.add_session(
            session, self._entry(claims, "session", now, to_site=case["site_id"], room_id=room["id"])
        )
        if case["status"] != "mediating":
            case = await self._decided(None, lambda: self._mediating(claims, case_id, now))
        await self._announce("case-updated", case)
        for site_id in below:
            await self.rooms.announce_invitation(claims, room, site_id, {"sites": [site_id]})
        for department_id in case["departments"]:
            await self.rooms.announce_invitation(claims, room, department_id, {"sites": [department_id]}, None, True)
        return session, room

    async def _mediating(self, claims: Claims, case_id: str, at: float) -> Record:
        """A session was held, so the case is being mediated: decided on the
        case as it is now, since the room is open whatever changed meanwhile
        (a 409 here would hide a session that exists)."""
        case = await self.store.get(case_id)
        if case is None:
            raise NotFound(f"no case {case_id}")
        if case["status"] == "mediating" or case["status"] not in SESSION_STATUSES:
            return case
        changes = {"status": "mediating", "result": None, "updated_at": at}
        entry = self._entry(claims, "status", at, from_status=case["status"], to_status="mediating")
        return await self._apply(case, changes, entry, None)

    async def escalate(self, claims: Claims, case_id: str, note: str, version: int | None = None) -> Record:
        """Move the case to the parent site's queue; `version` as for update."""
        return await self._decided(version, lambda: self._escalate(claims, case_id, note, version))

    async def _escalate(self, claims: Claims, case_id: str, note: str, version: int | None) -> Record:
        case = await self._writable(claims, case_id, version)
        if case["status"] not in ESCALATABLE:
            raise Conflict(f"a case that is {case['status']} cannot be escalated", case)
        site = self.tree.get(case["site_id"])
        if site is None or site.parent is None:
            raise Conflict(f"there is no level above {case['site_id']}", case)
        now = time.time()
        changes = {"site_id": site.parent, "status": "escalated", "result": None, "updated_at": now}
        entry = self._entry(
            claims,
            "escalated",
            now,
            from_status=case["status"],
            to_status="escalated",
            from_site=case["site_id"],
            to_site=site.parent,
            note=note,
        )
        return await self._apply(case, changes, entry, "case-escalated")

    async def refer(
        self, claims: Claims, case_id: str, department_id: str, ask: str, note: str, version: int | None = None
    ) -> Record:
        """Refer the case to a department beside its current site or a site
        above it; the department then reads the case and enters its session
        rooms (those open now too). Returns the referral."""
        department = self.tree.department(department_id)
        if department is None:
            raise NotFound(f"no department {department_id}")
        if ask not in ASKS:
            raise ValueError(f"ask must be one of {', '.join(ASKS)}")
        referral: Record = {}
        case = await self._decided(
            version, lambda: self._refer(claims, case_id, department, ask, note, version, referral)
        )
        for session in await self.store.sessions(case_id):
            room = await self.rooms.state.get_room(session["room_id"])
            if room is not None:  # a session room still open: the department joins it
                await self.rooms.admit_department(claims, room, department.id)
        await self._announce("case-referred", case, referral=self._named(referral))
        return self._named(referral)

    async def _refer(
        self,
        claims: Claims,
        case_id: str,
        department: Department,
        ask: str,
        note: str,
        version: int | None,
        out: Record,
    ) -> Record:
        """Decide and write a referral; `out` receives it."""
        case = await self._writable(claims, case_id, version)
        if case["status"] not in REFERABLE:
            raise Conflict(f"a case that is {case['status']} cannot be referred", case)
        department_id = department.id
        if not self.tree.covers(department.site_id, case["site_id"]):
            raise ValueError(f"department {department_id} is not beside the case's site or a site above it")
        pending = (await self.store.referrals([case_id]))[case_id]
        if any(r["department_id"] == department_id and r["decision"] is None for r in pending):
            raise Conflict(f"case {case_id} already waits for an answer of {department_id}", case)
        now = time.time()
        out |= {
            "id": _new_id("ref"),
            "case_id": case_id,
            "department_id": department_id,
            "department_kind": department.kind,
            "ask": ask,
            "note": note,
            "referred_by": claims.user,
            "from_site": case["site_id"],
            "referred_at": now,
            "decision": None,
            "outcome": "",
            "document_no": "",
            "answered_by": None,
            "answered_at": None,
        }
        changes = {"departments": sorted({*case["departments"], department_id}), "updated_at": now}
        entry = self._entry(
            claims, "referred", now, from_site=case["site_id"], department=department_id, referral_id=out["id"]
        ) | {"note": f"{ask}: {note}" if note else ask}
        return await self._apply(case, changes, entry, None, referral=out)

    async def answer(
        self, claims: Claims, case_id: str, referral_id: str, decision: str, outcome: str, document_no: str
    ) -> Record:
        """A department's answer to a referral (once): accepted or declined,
        with its outcome and, say, the number of a confirmation ruling."""
        if decision not in DECISIONS:
            raise ValueError(f"decision must be one of {', '.join(DECISIONS)}")
        referral: Record = {}
        case = await self._decided(
            None, lambda: self._answer(claims, case_id, referral_id, decision, outcome, document_no, referral)
        )
        await self._announce("referral-answered", case, referral=self._named(referral))
        return self._named(referral)

    async def _answer(
        self,
        claims: Claims,
        case_id: str,
        referral_id: str,
        decision: str,
        outcome: str,
        document_no: str,
        out: Record,
    ) -> Record:
        case = await self._readable(claims, case_id)
        found = next((r for r in (await self.store.referrals([case_id]))[case_id] if r["id"] == referral_id), None)
        if found is None:
            raise NotFound(f"no referral {referral_id} of case {case_id}")
        if claims.department != found["department_id"]:
            raise Forbidden(f"only the people of {found['department_id']} answer this referral")
        if found["decision"] is not None:
            raise Conflict(f"referral {referral_id} was answered already ({found['decision']})", case)
        now = time.time()
        out |= found | {
            "decision": decision,
            "outcome": outcome,
            "document_no": document_no,
            "answered_by": claims.user,
            "answered_at": now,
        }
        note = " · ".join(p for p in (decision, outcome, document_no) if p)
        entry = self._entry(
            claims, "referral-answered", now, department=found["department_id"], referral_id=referral_id, note=note
        )
        return await self._apply(case, {"updated_at": now}, entry, None, referral=out)

    # -- sessions follow their rooms ----------------------------------------

    async def on_event(self, event: Event) -> None:
        """Start/end times of a session from its room's roster events."""
        kind = event.get("type")
        room_id = str(event.get("room_id") or "")
        if kind == "participant-joined":
            await self.store.session_started(room_id, float(event["participant"].get("joined_at") or time.time()))
        elif (
            kind == "participant-left"
            and await self.store.has_session(room_id)
            and not await self.rooms.state.participants(room_id)
        ):
            await self.store.session_ended(room_id, time.time())

    # -- helpers -------------------------------------------------------------

    def _visited(self, case: Record) -> list[str]:
        """The sites the case has been at, from its origin up to where it is now."""
        out, site = [], self.tree.get(case["origin_site_id"])
        while site is not None:
            out.append(site.id)
            if site.id == case["site_id"]:
                return out
            site = self.tree.get(site.parent) if site.parent else None
        return [case["site_id"]]  # the tree changed under the case: only its current site is sure

    @staticmethod
    def _entry(claims: Claims, action: str, at: float, **fields: Any) -> Record:
        return {"at": at, "user": claims.user, "role": claims.role, "action": action} | fields

    @staticmethod
    async def _decided(version: int | None, change: Callable[[], Awaitable[Record]]) -> Record:
        """Run `change`, which reads the case, decides and writes. A caller who
        named a version gets Stale as it is; one who did not named no basis,
        so the change is decided again on the case another process just
        wrote (its rules checked anew), a few times before giving up."""
        for _ in range(STALE_RETRIES):
            try:
                return await change()
            except Stale:
                if version is not None:
                    raise
        return await change()

    async def _apply(
        self, case: Record, changes: Record, entry: Record, event: str | None, referral: Record | None = None
    ) -> Record:
        """Write `changes` over the version of `case` they were decided on: the
        case after them, or Conflict carrying the case as another change left it."""
        if not await self.store.update(case["id"], case["version"], changes, entry, referral):
            current = await self.store.get(case["id"])
            version = current["version"] if current else "gone"
            raise Stale(
                f"case {case['id']} changed meanwhile (now at version {version}); reload it and try again",
                current,
            )
        changed = case | changes | {"version": case["version"] + 1}
        if event is not None:
            await self._announce(event, changed, from_site=case["site_id"])
        return changed

    async def _announce(
        self, kind: str, case: Record, from_site: str | None = None, referral: Record | None = None
    ) -> None:
        """Tell the case's readers, live. They are exactly the users covering
        its origin (see the module doc): the sites it has been at and those
        above; siblings never; and the people of the departments it was
        referred to (one more event: an audience's keys must all hold)."""
        event: Record = {"type": kind, "case": case, "from_site": from_site or case["site_id"]}
        if referral is not None:
            event["referral"] = referral
        roles = list(CASE_ROLES)
        await self.rooms.state.emit(event | {"to": {"covering": case["origin_site_id"], "roles": roles}})
        if case["departments"]:
            await self.rooms.state.emit(event | {"to": {"sites": list(case["departments"]), "roles": roles}})
