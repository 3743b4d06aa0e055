"""The recorder of one hub process: which rooms are being recorded, and
keeping each session's streams and roster current from the room events.

In a cluster a room is recorded by one process, whichever received the
request: it holds the room's `recording` record in live state, pulls the
streams other processes host (relays) and writes the one manifest. Another
process asked to stop it asks the holder (an act over live state)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import Any

from hub.core.access import Forbidden
from hub.core.livestate import EventFollower, Unavailable
from hub.core.records import Event, Room, Stream
from hub.core.rooms import NotFound, Rooms
from hub.core.store import Database
from hub.core.tokens import Claims

from .audit import LiveAudit
from .catalogue import Catalogue
from .manifest import MANIFEST, recover
from .session import RecordingSession

log = logging.getLogger(__name__)
#: `started_by` of a mediation recorded from its first participant; it stops with the last one leaving.
AUTO = "auto"


def held_here(root: Path, node_url: str, row: dict[str, Any]) -> bool:
    """See Recorder.holds; a row from before node URLs were kept counts as this node's."""
    return (root / row["id"]).is_dir() or row["node_url"] in ("", node_url)


class Recorder:
    def __init__(
        self, rooms: Rooms, root: Path, db: Database, segment_seconds: float = 2.0, record_mediation: bool = False
    ) -> None:
        self.rooms = rooms
        self.root = root.resolve()
        self.catalogue = Catalogue(db)
        self.audit = LiveAudit(self.catalogue)
        self.segment_seconds = segment_seconds
        self.record_mediation = record_mediation
        #: room id -> its session being recorded on this process
        self.sessions: dict[str, RecordingSession] = {}
        self._follower = EventFollower(rooms.state, self._on_event, "recorder")
        rooms.state.acts["recording-stop"] = self._act_stop
        rooms.state.restorers.append(self._restore)

    async def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        await self.catalogue.open()
        await self.recover(await self.rooms.state.live_nodes())
        self._follower.start()

    def holds(self, row: dict[str, Any]) -> bool:
        """Whether this process holds a recording's files: they are in its
        recordings directory (HUB_SHARED_MEDIA: every node's), or this
        process's URL recorded them (and they are gone)."""
        return held_here(self.root, self.rooms.node_url, row)

    async def recover(self, live_nodes: set[str]) -> list[str]:
        """Complete the manifests of sessions a killed process left open
        (not those another running hub process is still recording, nor
        those another machine holds: that one completes its own)."""
        done = []
        for row in await self.catalogue.unfinished():
            if row["node"] in live_nodes or not self.holds(row):
                continue
            folder = self.root / row["id"]
            if not (folder / MANIFEST).is_file():
                await self.catalogue.update(row["id"], status="interrupted")
                continue
            manifest = await asyncio.to_thread(recover, folder)
            await self.catalogue.update(
                row["id"], status="interrupted", ended_at=manifest["ended_at"], chain_head=manifest["chain_head"]
            )
            log.warning("recording %s was interrupted; recovered what is on disk", row["id"])
            done.append(row["id"])
        return done

    async def close(self) -> None:
        await self._follower.stop()
        for room_id in tuple(self.sessions):
            await self._stop(room_id)
        await self.audit.close()

    # -- control -------------------------------------------------------------

    async def set_recording(self, claims: Claims, room_id: str, on: bool) -> dict[str, Any]:
        room = await self.rooms.room(claims, room_id)
        if claims.role == "guest":
            raise Forbidden("guests cannot start or stop a recording")
        if on:
            session = self.sessions.get(room_id) or await self._start(room, claims.user)
            if session is not None:
                return {"room_id": room_id, "on": True, "recording": session.summary()}
            holder = await self._holder(room_id)  # another process won the race to record it
            return {"room_id": room_id, "on": holder is not None, "recording": holder and holder["recording"]}
        if room_id in self.sessions:
            return {"room_id": room_id, "on": False, "recording": await self._stop(room_id)}
        holder = await self._holder(room_id)
        if holder is None:
            raise NotFound(f"room {room_id} is not being recorded")
        stopped = await self.rooms.ask(holder["node"], "recording-stop", room_id=room_id)
        return {"room_id": room_id, "on": False, "recording": stopped["recording"]}

    async def status(self, claims: Claims, room_id: str) -> dict[str, Any]:
        await self.rooms.room(claims, room_id)
        session = self.sessions.get(room_id)
        if session is not None:
            return {"room_id": room_id, "on": True, "recording": session.summary()}
        holder = await self._holder(room_id)
        return {"room_id": room_id, "on": holder is not None, "recording": holder and holder["recording"]}

    async def _holder(self, room_id: str) -> dict[str, Any] | None:
        """The room's `recording` record: which process records it (None: none
        does; a record left by a process that died is removed)."""
        state = self.rooms.state
        holder = await state.get_record("recording", room_id)
        if holder is not None and holder["node"] not in await state.live_nodes():
            await state.delete_record("recording", room_id)
            return None
        return holder

    async def _act_stop(self, args: dict[str, Any]) -> dict[str, Any]:
        room_id = str(args["room_id"])
        if room_id not in self.sessions:
            raise NotFound(f"room {room_id} is not being recorded")
        return {"recording": await self._stop(room_id)}

    async def _restore(self) -> None:
        """After an outage: the rooms this process records are marked so
        again, and a mark of one it stopped meanwhile is removed."""
        state = self.rooms.state
        for room_id, holder in (await state.records("recording")).items():
            if holder["node"] == self.rooms.node_id and room_id not in self.sessions:
                await state.delete_record("recording", room_id)
        for room_id, session in tuple(self.sessions.items()):
            await state.put_record("recording", room_id, self._record(session))

    def _record(self, session: RecordingSession) -> dict[str, Any]:
        return {"node": self.rooms.node_id, "recording": session.summary()}

    async def _start(self, room: Room, started_by: str) -> RecordingSession | None:
        """Record a room here, unless another running process already does (None)."""
        state, room_id = self.rooms.state, room["id"]
        claim = {"node": self.rooms.node_id, "recording": None}
        if not await state.claim_record("recording", room_id, claim):
            if await self._holder(room_id) is not None or not await state.claim_record("recording", room_id, claim):
                return None
        try:
            return await self._open(room, started_by)
        except BaseException:
            await state.delete_record("recording", room_id)
            raise

    async def _open(self, room: Room, started_by: str) -> RecordingSession:
        site = self.rooms.tree.get(room["site_id"])
        session = await asyncio.to_thread(
            RecordingSession,
            self.root,
            self.catalogue,
            room,
            started_by,
            self.segment_seconds,
            site.name if site else "",
            self.rooms.node_id,
            self.rooms.node_url,
            asyncio.get_running_loop(),
        )
        await session.register()
        self.sessions[room["id"]] = session
        await self.rooms.state.put_record("recording", room["id"], self._record(session))
        for participant in await self.rooms.state.participants(room["id"]):
            await session.participant_joined(participant)
        for stream in await self.rooms.state.streams(room["id"]):
            await self._add_stream(session, stream)
        log.info("recording %s of room %s started by %s", session.id, room["id"], started_by)
        await self.rooms.state.emit(
            {"type": "recording-started", "room_id": room["id"], "recording": session.summary()}
        )
        return session

    async def _stop(self, room_id: str) -> dict[str, Any]:
        session = self.sessions.pop(room_id)
        summary = await session.stop()
        with contextlib.suppress(Unavailable):  # with Redis down, _restore removes it when Redis is back
            await self.rooms.state.delete_record("recording", room_id)
        log.info("recording %s of room %s stopped", session.id, room_id)
        await self.rooms.state.emit({"type": "recording-stopped", "room_id": room_id, "recording": summary})
        return summary

    async def _add_stream(self, session: RecordingSession, stream: Stream) -> None:
        # A stream another process hosts is pulled here: one session records the whole room.
        tracks = self.rooms.local_tracks(stream["id"]) or await self.rooms.pulled_tracks(stream)
        if not tracks:
            log.warning("recording %s: stream %s is neither hosted nor pullable here", session.id, stream["id"])
            return
        if self.sessions.get(session.room_id) is not session:
            return  # stopped while the stream was being pulled
        if not session.add_stream(stream, self.rooms, tracks):
            log.warning("stream %s has no track the recorder can store (VP8, H.264, Opus)", stream["id"])

    # -- room events ---------------------------------------------------------

    async def _on_event(self, event: Event) -> None:
        room_id = str(event.get("room_id") or "")
        kind = event.get("type")
        session = self.sessions.get(room_id)
        if kind == "participant-joined":
            if session is None and self.record_mediation:
                room = await self.rooms.state.get_room(room_id)
                if room is not None and room.get("kind") == "mediation":
                    await self._start(room, AUTO)
                    return
            if session is not None:
                await session.participant_joined(event["participant"])
        elif session is None:
            return
        elif kind == "participant-left":
            session.participant_left(event["participant_id"])
            if session.manifest["started_by"] == AUTO and not await self.rooms.state.participants(room_id):
                await self._stop(room_id)  # the mediation is over
        elif kind == "stream-added":
            await self._add_stream(session, event["stream"])
        elif kind == "stream-removed":
            await session.remove_stream(event["stream_id"])
