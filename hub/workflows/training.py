"""Training broadcasts along the site tree, and who attended them.

A trainer opens a training room for a branch of the tree (a county with its
townships and villages, say): the room belongs to the branch's root site and
admits the whole branch. In it only the trainer and the attendees the
trainer promoted to speaker may publish; everyone else watches.

Attendance is kept in the hub's database (beside the recordings
catalogue) from the room events every hub process already receives: each
participant-joined of a training room opens a row, its participant-left
closes it. A participant who reconnects gets a new participant, so a second
row: both stay, and their minutes add up. Rows a killed hub process left
open are closed when a hub starts again, at the last moment that process
was known to be alive (its heartbeat in `attendance_nodes`), and marked
`interrupted`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from hub.core.access import Forbidden, can_reach_site, room_bound
from hub.core.livestate import EventFollower, NodeUnreachable, Record
from hub.core.records import Event, Participant, Room
from hub.core.rooms import NotFound, Rooms
from hub.core.store import Database, DatabaseError, Migrations, Tables, quoted
from hub.core.tasks import cancel_and_wait
from hub.core.tokens import Claims

log = logging.getLogger(__name__)

#: Roles that may start a training.
TRAINER_ROLES = ("trainer", "operator", "admin")
#: Roles that may read the attendance of any training of their jurisdiction.
ATTENDANCE_READERS = ("operator", "admin")

MIGRATIONS = Migrations(
    "trainings",
    (
        (
            """CREATE TABLE IF NOT EXISTS trainings (
    room_id TEXT PRIMARY KEY,
    title TEXT NOT NULL,
    site_id TEXT NOT NULL,
    trainer TEXT NOT NULL,
    trainer_name TEXT NOT NULL,
    trainer_site TEXT NOT NULL,
    started_at REAL NOT NULL,
    ended_at REAL
)""",
            "CREATE INDEX IF NOT EXISTS trainings_site_time ON trainings (site_id, started_at)",
            """CREATE TABLE IF NOT EXISTS attendance (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    room_id TEXT NOT NULL,
    participant_id TEXT NOT NULL,
    site_id TEXT NOT NULL,
    "user" TEXT NOT NULL,
    name TEXT NOT NULL,
    role TEXT NOT NULL,
    joined_at REAL NOT NULL,
    left_at REAL,
    node TEXT NOT NULL,
    interrupted INTEGER NOT NULL DEFAULT 0
)""",
            "CREATE INDEX IF NOT EXISTS attendance_room ON attendance (room_id, joined_at)",
            "CREATE INDEX IF NOT EXISTS attendance_time ON attendance (joined_at)",
            """CREATE TABLE IF NOT EXISTS attendance_nodes (
    node TEXT PRIMARY KEY,
    seen_at REAL NOT NULL
)""",
        ),
    ),
)

TRAINING_COLUMNS = ("room_id", "title", "site_id", "trainer", "trainer_name", "trainer_site", "started_at", "ended_at")
ATTENDANCE_COLUMNS = (
    "room_id",
    "participant_id",
    "site_id",
    "user",
    "name",
    "role",
    "joined_at",
    "left_at",
    "interrupted",
)


async def attendance_by_site(db: Database, since: float, until: float) -> list[dict[str, Any]]:
    """Training attendance per attending site over [since, until): rows
    {site_id, trainings, people, minutes}, for the statistics page.

    A row counts where it overlaps the period, clipped to it; a row still
    open counts up to now. `trainings` is how many trainings someone of
    the site attended, `people` how many distinct users.
    """
    return await AttendanceBook(db).by_site(since, until)


class AttendanceBook(Tables):
    """The trainings and attendance tables: a handful of short writes per join or leave."""

    migrations = MIGRATIONS

    async def _select(self, columns: tuple[str, ...], tail: str, args: list[Any]) -> list[dict[str, Any]]:
        table = "trainings" if columns is TRAINING_COLUMNS else "attendance"
        rows = await self.db.fetchall(f"SELECT {quoted(columns)} FROM {table} {tail}", args)
        return [dict(zip(columns, row, strict=True)) for row in rows]

    # -- trainings -------------------------------------------------------------

    async def add_training(self, training: dict[str, Any]) -> None:
        await self.db.execute(
            f"INSERT INTO trainings ({', '.join(TRAINING_COLUMNS)}) VALUES ({', '.join('?' * len(TRAINING_COLUMNS))})",
            [training.get(c) for c in TRAINING_COLUMNS],
        )

    async def end_training(self, room_id: str, at: float) -> bool:
        sql = "UPDATE trainings SET ended_at = ? WHERE room_id = ? AND ended_at IS NULL"
        return await self.db.execute(sql, [at, room_id]) > 0

    async def training(self, room_id: str) -> dict[str, Any] | None:
        rows = await self._select(TRAINING_COLUMNS, "WHERE room_id = ?", [room_id])
        return rows[0] if rows else None

    async def trainings(self, live_only: bool, limit: int = 200) -> list[dict[str, Any]]:
        where = "WHERE ended_at IS NULL " if live_only else ""
        return await self._select(TRAINING_COLUMNS, f"{where}ORDER BY started_at DESC LIMIT ?", [limit])

    # -- attendance ------------------------------------------------------------

    async def joined(self, participant: Participant, node: str) -> None:
        await self.db.execute(
            'INSERT INTO attendance (room_id, participant_id, site_id, "user", name, role, joined_at, node)'
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [
                participant["room_id"],
                participant["id"],
                participant["site_id"],
                participant["user"],
                participant["name"],
                participant["role"],
                participant["joined_at"],
                node,
            ],
        )

    async def left(self, room_id: str, participant_id: str, at: float) -> None:
        await self.db.execute(
            "UPDATE attendance SET left_at = ? WHERE room_id = ? AND participant_id = ? AND left_at IS NULL",
            [at, room_id, participant_id],
        )

    async def rows(self, room_id: str) -> list[dict[str, Any]]:
        return await self._select(ATTENDANCE_COLUMNS, "WHERE room_id = ? ORDER BY joined_at, id", [room_id])

    async def beat(self, node: str, at: float) -> None:
        await self.db.execute(
            "INSERT INTO attendance_nodes (node, seen_at) VALUES (?, ?)"
            " ON CONFLICT (node) DO UPDATE SET seen_at = excluded.seen_at",
            [node, at],
        )

    async def close_dead(self, live_nodes: set[str], now: float) -> int:
        """Close the attendance rows of hub processes no longer running, at
        the last moment each was seen; returns how many."""
        async with self.db.transaction() as tx:
            open_rows = await tx.fetchall(
                "SELECT DISTINCT a.node, n.seen_at FROM attendance a LEFT JOIN attendance_nodes n USING (node)"
                " WHERE a.left_at IS NULL"
            )
            closed = 0
            for node, seen in open_rows:
                if node not in live_nodes:
                    closed += await tx.execute(
                        "UPDATE attendance SET left_at = GREATEST(joined_at, ?), interrupted = 1"
                        " WHERE node = ? AND left_at IS NULL",
                        [seen if seen is not None else now, node],
                    )
            for (node,) in await tx.fetchall("SELECT node FROM attendance_nodes"):
                if node not in live_nodes:
                    await tx.execute("DELETE FROM attendance_nodes WHERE node = ?", [node])
        return closed

    async def by_site(self, since: float, until: float) -> list[dict[str, Any]]:
        """See attendance_by_site."""
        rows = await self.db.fetchall(
            """
                SELECT site_id, COUNT(DISTINCT room_id), COUNT(DISTINCT "user"),
                       SUM(GREATEST(0, LEAST(COALESCE(left_at, :now), :until) - GREATEST(joined_at, :since)))
                FROM attendance
                WHERE joined_at < :until AND COALESCE(left_at, :now) > :since
                GROUP BY site_id ORDER BY site_id
                """,
            {"since": since, "until": until, "now": time.time()},
        )
        return [
            {"site_id": site, "trainings": trainings, "people": people, "minutes": round(seconds / 60, 1)}
            for site, trainings, people, seconds in rows
        ]


def minutes(row: dict[str, Any], now: float) -> float:
    return round(((row["left_at"] or now) - row["joined_at"]) / 60, 1)


class Trainings:
    """The training service of one hub process."""

    def __init__(self, rooms: Rooms, db: Database, beat_seconds: float = 10.0) -> None:
        self.rooms = rooms
        self.book = AttendanceBook(db)
        self.beat_seconds = beat_seconds
        self._follower = EventFollower(rooms.state, self._on_event, "training attendance")
        self._heartbeat_task: asyncio.Task[None] | None = None
        rooms.publish_guards["training"] = self._may_publish

    async def start(self) -> None:
        """Close what a killed process left open, then follow the room events."""
        await self.book.open()
        live = await self.rooms.state.live_nodes()
        now = time.time()
        if closed := await self.book.close_dead(live, now):
            log.warning("closed %d attendance rows left open by hub processes that stopped", closed)
        for training in await self.book.trainings(live_only=True):
            if await self.rooms.state.get_room(training["room_id"]) is None:
                await self.book.end_training(training["room_id"], now)  # its room went with the live state
        await self.book.beat(self.rooms.node_id, now)
        self._follower.start()
        self._heartbeat_task = asyncio.create_task(self._heartbeat())

    async def close(self) -> None:
        await self._follower.stop()
        await cancel_and_wait(self._heartbeat_task)

    # -- trainings -------------------------------------------------------------

    async def start_training(self, claims: Claims, title: str, branch: str) -> Record:
        """Open a training room for a branch and invite everyone in it."""
        if claims.role not in TRAINER_ROLES:
            raise Forbidden("only a trainer, an operator or an admin may start a training")
        if not title.strip():
            raise ValueError("a training needs a title")
        room = await self.rooms.open_room(
            claims, branch, "training", title.strip(), admit=[branch], trainer=claims.user, branch=branch
        )
        training = {
            "room_id": room["id"],
            "title": room["title"],
            "site_id": branch,
            "trainer": claims.user,
            "trainer_name": claims.display_name(),
            "trainer_site": claims.site,
            "started_at": room["created_at"],
            "ended_at": None,
        }
        await self.book.add_training(training)
        await self.rooms.announce_invitation(claims, room, branch, {"within": branch}, downward=True)
        return training | {"room": room}

    def _visible(self, claims: Claims, training: dict[str, Any]) -> bool:
        """A training is listed to the people of its branch and those above it;
        to a room-bound token (not a guest's) only if it is its room."""
        if room_bound(claims):
            return claims.role != "guest" and claims.room == training["room_id"]
        tree = self.rooms.tree
        site = training["site_id"]
        return tree.covers(claims.site, site) or tree.covers(site, claims.site)

    async def visible(self, claims: Claims, include_ended: bool = False) -> list[Record]:
        """Trainings the caller may see, newest first, with the names of the
        branch and the trainer's site (both may lie above the caller's tree);
        `invited`: the caller's home lies in the branch (the home page offers
        to join)."""
        active = await self.rooms.state.active_rooms()
        tree = self.rooms.tree
        return [
            t
            | {
                "participant_count": active.get(t["room_id"], 0),
                "site": site.to_json() if (site := tree.get(t["site_id"])) else None,
                "trainer_site_name": getattr(tree.get(t["trainer_site"]), "name", ""),
                "trainer_site_name_en": getattr(tree.get(t["trainer_site"]), "name_en", ""),
                "invited": tree.covers(t["site_id"], claims.site) and claims.user != t["trainer"],
            }
            for t in await self.book.trainings(live_only=not include_ended)
            if self._visible(claims, t)
        ]

    async def _training(self, claims: Claims, room_id: str) -> dict[str, Any]:
        training = await self.book.training(room_id)
        if training is None or not self._visible(claims, training):
            raise NotFound(f"no training {room_id}")
        return training

    def _may_manage(self, claims: Claims, training: dict[str, Any]) -> bool:
        return claims.user == training["trainer"] or (
            claims.role in ATTENDANCE_READERS and can_reach_site(self.rooms.tree, claims, training["site_id"])
        )

    async def end(self, claims: Claims, room_id: str) -> Record:
        """End a training: its streams stop, its participants are let go and
        the branch may no longer enter."""
        training = await self._training(claims, room_id)
        if not self._may_manage(claims, training):
            raise Forbidden("only the trainer or an operator above the training may end it")
        now = time.time()
        if not await self.book.end_training(room_id, now):
            raise ValueError(f"training {room_id} has already ended")
        training["ended_at"] = now
        await self.rooms.update_room(room_id, {"ended_at": now, "admit": []})
        await self.rooms.state.emit({"type": "training-ended", "room_id": room_id, "training": training})
        try:
            await self._end_streams(room_id, None)
        except NodeUnreachable as exc:  # it has ended: a dead host's streams are swept with it
            log.warning("training %s ended; a stream's host did not answer: %s", room_id, exc)
        for participant in await self.rooms.state.participants(room_id):
            await self.rooms.leave(room_id, participant["id"])
        return training

    async def branch_sites(self, claims: Claims, room_id: str) -> list[Record]:
        """The sites of a training's branch, for anyone who may enter it: the
        room names its attendees' sites, which may lie beside the caller's."""
        room = await self.rooms.room(claims, room_id)
        # A training-kind room that Trainings did not start has no branch (one
        # opened through POST /api/rooms before that door took mediation rooms only).
        if room.get("kind") != "training" or "branch" not in room:
            raise NotFound(f"room {room_id} is not a training")
        return [site.to_json() for site in self.rooms.tree.jurisdiction(room["branch"])]

    # -- speakers --------------------------------------------------------------

    async def _trainer_room(self, claims: Claims, room_id: str) -> Record:
        room = await self.rooms.room(claims, room_id)
        if room.get("kind") != "training":
            raise NotFound(f"room {room_id} is not a training")
        if room.get("trainer") != claims.user:
            raise Forbidden("only the trainer may choose who speaks")
        if room.get("ended_at"):
            raise ValueError(f"training {room_id} has ended")
        return room

    async def promote(self, claims: Claims, room_id: str, participant_id: str) -> Record:
        """Let an attendee speak: they may publish until returned to watching."""
        await self._trainer_room(claims, room_id)
        return await self.rooms.update_participant(room_id, participant_id, {"speaker": True, "hand": False})

    async def demote(self, claims: Claims, room_id: str, participant_id: str) -> Record:
        """Return a speaker to watching: their streams end on whichever hub
        processes host them before this answers (503 if one does not answer;
        asking again finishes it)."""
        await self._trainer_room(claims, room_id)
        participant = await self.rooms.update_participant(room_id, participant_id, {"speaker": False})
        await self._end_streams(room_id, participant_id)
        return participant

    def _may_publish(self, claims: Claims, room: Room, participant: Participant | None) -> None:
        """Rooms.publish guard of training rooms."""
        if room.get("ended_at"):
            raise Forbidden("the training has ended")
        if claims.user == room.get("trainer") or (participant is not None and participant.get("speaker")):
            return
        raise Forbidden("in a training only the trainer and the attendees they let speak may publish")

    # -- attendance ------------------------------------------------------------

    async def attendance(self, claims: Claims, room_id: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        training = await self._training(claims, room_id)
        if not self._may_manage(claims, training):
            raise Forbidden("only the trainer or an operator above the training may read its attendance")
        now = time.time()
        rows = await self.book.rows(room_id)
        return training, [row | {"interrupted": bool(row["interrupted"]), "minutes": minutes(row, now)} for row in rows]

    # -- room events -----------------------------------------------------------

    async def _on_event(self, event: Event) -> None:
        kind = event.get("type")
        room_id = str(event.get("room_id") or "")
        if kind == "participant-joined":
            participant = event["participant"]
            # Each join is written once: by the hub process that hosts the participant.
            if participant.get("node") != self.rooms.node_id:
                return
            room = await self.rooms.state.get_room(room_id)
            if room is not None and room.get("kind") == "training":
                await self.book.joined(participant, self.rooms.node_id)
        elif kind == "participant-left":
            await self.book.left(room_id, event["participant_id"], time.time())

    async def _end_streams(self, room_id: str, participant_id: str | None) -> None:
        """End a room's streams (of one participant, or all) through the
        processes hosting them; NodeUnreachable once every other was tried."""
        unanswered: NodeUnreachable | None = None
        for stream in await self.rooms.state.streams(room_id):
            if participant_id is None or stream["participant_id"] == participant_id:
                try:
                    await self.rooms.ask(stream["node"], "end-stream", stream_id=stream["id"])
                except NotFound:
                    pass  # it ended meanwhile
                except NodeUnreachable as exc:
                    unanswered = exc
        if unanswered is not None:
            raise unanswered

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.beat_seconds)
            try:
                await self.book.beat(self.rooms.node_id, time.time())
            except DatabaseError:
                log.exception("attendance heartbeat failed")
