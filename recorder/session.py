"""One recorded room session: its streams' recorders and its manifest."""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from hub.core.records import Participant, Room, Stream
from hub.media.forward import Streams, Track

from .catalogue import Catalogue
from .manifest import GENESIS, link, write_manifest
from .stream import Segment, StreamRecorder, recordable

log = logging.getLogger(__name__)


def new_recording_id() -> str:
    return f"rec-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{secrets.token_hex(3)}"


class RecordingSession:
    """Keeps the manifest current: written at start, at every stream start,
    participant change and finished segment, so a killed process leaves a
    manifest that `manifest.recover` can complete.

    Made on a worker thread (it writes the first manifest), then `register`ed
    in the catalogue from the event loop `loop`; the writer threads' catalogue
    updates go through that loop too."""

    def __init__(
        self,
        root: Path,
        catalogue: Catalogue,
        room: Room,
        started_by: str,
        segment_seconds: float,
        site_name: str,
        node: str,
        node_url: str,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.id = new_recording_id()
        self.room_id: str = room["id"]
        self.folder = root / self.id
        self.folder.mkdir(parents=True)
        self._catalogue = catalogue
        self._loop = loop
        #: catalogue updates the writer threads handed to the loop, in order
        self._updates: list[Future[None]] = []
        self._segment_seconds = segment_seconds
        self._lock = threading.Lock()  # writer threads report segments
        self._recorders: dict[str, StreamRecorder] = {}
        self._seq = -1
        self.manifest: dict[str, Any] = {
            "version": 1,
            "id": self.id,
            "room_id": room["id"],
            "site_id": room["site_id"],
            "site_name": site_name,
            "kind": room.get("kind", "standing"),
            "title": room.get("title", ""),
            "started_by": started_by,
            "node": node,
            "node_url": node_url,
            "started_at": time.time(),
            "ended_at": None,
            "status": "recording",
            "segment_seconds": segment_seconds,
            "participants": [],
            "streams": [],
            "chain_head": GENESIS,
        }
        self._save()

    async def register(self) -> None:
        await self._catalogue.add(self.summary() | {"search_text": self._search_text()})

    def summary(self) -> dict[str, Any]:
        m = self.manifest
        return {
            "id": self.id,
            "room_id": m["room_id"],
            "site_id": m["site_id"],
            "kind": m["kind"],
            "title": m["title"],
            "started_at": m["started_at"],
            "ended_at": m["ended_at"],
            "status": m["status"],
            "chain_head": m["chain_head"],
            "node": m["node"],
            "node_url": m["node_url"],
        }

    def _search_text(self) -> str:
        m = self.manifest
        names = " ".join(p["name"] for p in m["participants"])
        return f"{m['title']} {m['room_id']} {m['site_name']} {names}"

    def _save(self) -> None:
        write_manifest(self.folder, self.manifest)

    # -- participants --------------------------------------------------------

    async def participant_joined(self, participant: Participant) -> None:
        with self._lock:
            if any(p["id"] == participant["id"] for p in self.manifest["participants"]):
                return
            self.manifest["participants"].append(
                {
                    "id": participant["id"],
                    "name": participant.get("name", ""),
                    "user": participant.get("user", ""),
                    "site_id": participant.get("site_id", ""),
                    "joined_at": max(participant.get("joined_at", 0.0), self.manifest["started_at"]),
                    "left_at": None,
                }
            )
            self._save()
        await self._catalogue.update(self.id, search_text=self._search_text())

    def participant_left(self, participant_id: str) -> None:
        with self._lock:
            for p in self.manifest["participants"]:
                if p["id"] == participant_id and p["left_at"] is None:
                    p["left_at"] = time.time()
                    self._save()

    # -- streams -------------------------------------------------------------

    def add_stream(self, stream: Stream, streams: Streams, tracks: dict[str, Track]) -> bool:
        """Start recording a locally hosted stream, subscribing through `streams`;
        False when none of its tracks can be stored."""
        if stream["id"] in self._recorders or not any(recordable(t) for t in tracks.values()):
            return False
        with self._lock:
            entry: dict[str, Any] = {
                "id": stream["id"],
                "folder": f"s{len(self.manifest['streams']) + 1}",
                "participant_id": stream.get("participant_id"),
                "name": stream.get("name", ""),
                "user": stream.get("user", ""),
                "kind": stream.get("kind", "camera"),
                "codecs": {k: t.mime_type for k, t in tracks.items() if recordable(t)},
                "offset": None,
                "width": 0,
                "height": 0,
                "segments": [],
            }
            self.manifest["streams"].append(entry)
            self._save()

        def started(at: float, info: dict[str, object]) -> None:
            with self._lock:
                entry["offset"] = round(at - self.manifest["started_at"], 3)
                entry.update(info)
                self._save()

        def finished(segment: Segment) -> None:
            with self._lock:
                self._seq += 1
                head = link(self.manifest["chain_head"], segment.path, segment.sha256)
                entry["segments"].append(vars(segment) | {"seq": self._seq, "link": head})
                self.manifest["chain_head"] = head
                self._save()
                # Scheduled under the lock: the loop applies the heads in chain order.
                self._updates = [f for f in self._updates if not f.done()]
                self._updates.append(
                    asyncio.run_coroutine_threadsafe(self._catalogue.update(self.id, chain_head=head), self._loop)
                )

        recorder = StreamRecorder(
            self.folder, entry["folder"], streams, stream["id"], tracks, self._segment_seconds, started, finished
        )
        self._recorders[stream["id"]] = recorder
        recorder.start()
        return True

    async def remove_stream(self, stream_id: str) -> None:
        recorder = self._recorders.pop(stream_id, None)
        if recorder is not None:
            recorder.stop()
            await recorder.wait()

    async def stop(self) -> dict[str, Any]:
        for stream_id in tuple(self._recorders):
            await self.remove_stream(stream_id)
        for update in self._updates:
            try:
                await asyncio.wrap_future(update)
            except Exception:  # the final update below writes the head again
                log.exception("recording %s: a segment's catalogue update failed", self.id)
        with self._lock:
            now = time.time()
            self.manifest["ended_at"] = now
            self.manifest["status"] = "complete"
            # Streams that never sent a keyframe recorded nothing.
            self.manifest["streams"] = [s for s in self.manifest["streams"] if s["segments"]]
            for p in self.manifest["participants"]:
                if p["left_at"] is None:
                    p["left_at"] = now
            self._save()
        await self._catalogue.update(self.id, ended_at=now, status="complete", chain_head=self.manifest["chain_head"])
        return self.summary()
