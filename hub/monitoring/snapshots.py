"""Snapshots: a JPEG thumbnail of every live video stream, every period.

Decoding every frame of hundreds of feeds to show a thumbnail would cost
far more than forwarding them. So a snapshot decodes one frame: when one is
due, the stream's source asks its publisher for a keyframe, a
`KeyframeCatcher` (a sink on the source only while it waits) collects that
keyframe's packets into one encoded frame, and a worker thread decodes just
that frame with PyAV, shrinks it and encodes a JPEG with OpenCV. The same
picture feeds the video health diagnostics (`health.py`).

Each hub process snapshots the streams it hosts (WHIP publishers and the
cameras it pulls) and stores the latest of each in live state, so that
every hub process can serve it:

* record kind "snapshot", key stream id: the metadata (small, listed for a
  branch of the tree);
* record kind "snapshot-jpeg", key stream id: {"jpeg": base64, "at"};
* record kind "alert", key "<stream id>:<kind>": an active health alert.

All expire after a few periods unless rewritten, so a hub process that
dies leaves nothing stale behind for long.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import av
import cv2
import numpy as np
from aiortc.rtp import RtpPacket

from hub.core.livestate import EventFollower, Record, Unavailable
from hub.core.records import Event, Stream
from hub.core.rooms import Rooms
from hub.core.tasks import cancel_and_wait
from hub.media.forward import Outgoing, Streams, Track
from hub.media.frames import FrameAssembler, RtpIn
from hub.monitoring.health import Health, Measures, measure

log = logging.getLogger(__name__)

#: Width of a snapshot in pixels (height keeps the aspect ratio); enough
#: for a thumbnail grid, and for the health diagnostics, at a fraction of
#: the cost of the full picture. Smaller pictures are not enlarged.
WIDTH = 320
#: JPEG quality (OpenCV's 0-100): 5-10 KB at 320x240 (bench/snapshots.py), without visible blocks.
JPEG_QUALITY = 70
#: Records live this many periods unless a newer snapshot replaces them.
TTL_PERIODS = 3
#: Seconds to wait at least for the requested keyframe (and at most one
#: period beyond that): a camera that cannot be asked for one sends the next
#: of its own, and a publisher that sends none in time gets no snapshot this period.
CAPTURE_TIMEOUT = 5.0
#: Keyframe decoders PyAV names by RTP media type.
DECODERS = {"video/vp8": "vp8", "video/h264": "h264"}


class KeyframeCatcher:
    """A sink that, while it is subscribed to a stream's video, waits for the next whole keyframe."""

    def __init__(self, streams: Streams, stream_id: str, track: Track) -> None:
        self._streams = streams
        self._stream_id = stream_id
        self.track = track
        self._assembler: FrameAssembler | None = None
        self._caught: asyncio.Future[bytes | None] | None = None

    async def capture(self, timeout: float) -> bytes | None:
        """Ask for a keyframe and return its encoded bytes (None: none came)."""
        if self.track.codec is None:
            return None
        self._assembler = FrameAssembler(self.track.codec)  # starts waiting for a keyframe
        self._caught = asyncio.get_running_loop().create_future()
        # Of a simulcast stream, the lowest layer that fills a snapshot: less to decode.
        layer = self._streams.subscribe(self._stream_id, "video", self, width=WIDTH)
        if layer is None:
            return None  # the stream ended
        layer.request_keyframe()
        try:
            return await asyncio.wait_for(self._caught, timeout)
        except TimeoutError:
            return None
        finally:
            self._streams.unsubscribe(self._stream_id, "video", self)
            self._assembler = None

    def push(self, packet: RtpPacket, shared: Outgoing) -> None:
        if self._assembler is None or self._caught is None or self._caught.done():
            return
        frames = self._assembler.add(
            RtpIn(packet.sequence_number, packet.timestamp, packet.marker, packet.payload, time.time())
        )
        if frames:  # the assembler lets no frame through before a keyframe
            self._caught.set_result(frames[0].data)

    def close(self) -> None:
        """The track ended."""
        if self._caught is not None and not self._caught.done():
            self._caught.set_result(None)


@dataclass
class Picture:
    jpeg: bytes
    width: int
    height: int
    measures: Measures


def render(mime_type: str, keyframe: bytes, width: int = WIDTH, quality: int = JPEG_QUALITY) -> Picture:
    """Decode one keyframe into a JPEG thumbnail and its health measures.

    CPU-bound (PyAV and OpenCV release the GIL): run it in a worker thread.
    """
    decoder = av.CodecContext.create(DECODERS[mime_type], "r")
    frames = [*decoder.decode(av.Packet(keyframe)), *decoder.decode(None)]
    if not frames:
        raise ValueError(f"the {mime_type} keyframe decoded to no picture")
    frame = frames[0]
    width = min(width, frame.width)
    height = max(2, round(frame.height * width / frame.width / 2) * 2)
    # swscale shrinks and converts in one pass, cheaper than converting the full picture.
    bgr: np.ndarray = frame.reformat(width, height, "bgr24", interpolation="AREA").to_ndarray()
    ok, jpeg = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("OpenCV could not encode the JPEG")
    return Picture(jpeg.tobytes(), width, height, measure(bgr))


@dataclass
class Monitor:
    """The snapshots and diagnostics of one local video stream."""

    stream: Stream
    site_id: str  #: the site whose room holds the stream
    catcher: KeyframeCatcher
    health: Health = field(default_factory=Health)
    task: asyncio.Task[None] | None = None

    def base(self) -> Record:
        """The fields every snapshot and alert of this stream carries."""
        out = {"stream_id": self.stream["id"], "site_id": self.site_id, "room_id": self.stream["room_id"]}
        if self.stream.get("camera_id"):
            out["camera_id"] = self.stream["camera_id"]
        return out


class Snapshots:
    """Snapshots and health diagnostics of every video stream this hub process hosts."""

    def __init__(self, rooms: Rooms, period: float) -> None:
        self.rooms = rooms
        self.period = period
        self.capture_timeout = max(CAPTURE_TIMEOUT, period)
        self.ttl = TTL_PERIODS * period + self.capture_timeout
        self.monitors: dict[str, Monitor] = {}
        # One worker: snapshots of many streams queue up rather than take the
        # second core away from forwarding.
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="snapshot")
        # Dropped for falling behind, it listens again and looks at what is live.
        self._follower = EventFollower(rooms.state, self._on_event, "snapshots", resumed=self._catch_up)

    async def start(self) -> None:
        if self.period <= 0:
            return  # snapshots are off
        self._follower.start()
        await self._catch_up()

    async def close(self) -> None:
        await self._follower.stop()
        for stream_id in tuple(self.monitors):
            await self._unwatch(stream_id)
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- reading (any hub process) -------------------------------------------

    async def latest(self, stream_id: str) -> tuple[float, bytes] | None:
        """The newest snapshot of a stream: when it was taken, and its JPEG."""
        image = await self.rooms.state.get_record("snapshot-jpeg", stream_id)
        if image is None:
            return None
        return image["at"], base64.b64decode(image["jpeg"])

    async def in_branch(self, site_id: str) -> list[Record]:
        """Metadata of every snapshot of a stream in the site's branch of the tree."""
        tree = self.rooms.tree
        found = await self.rooms.state.records("snapshot")
        return sorted((r for r in found.values() if tree.covers(site_id, r["site_id"])), key=lambda r: r["stream_id"])

    async def alerts(self, site_id: str) -> list[Record]:
        """Active alerts of streams in the site's branch of the tree, oldest first."""
        tree = self.rooms.tree
        found = await self.rooms.state.records("alert")
        return sorted((a for a in found.values() if tree.covers(site_id, a["site_id"])), key=lambda a: a["since"])

    # -- following the streams of this process -------------------------------

    async def _on_event(self, event: Event) -> None:
        if event.get("type") == "stream-added":
            await self._watch(event["stream"])
        elif event.get("type") == "stream-removed":
            await self._unwatch(event["stream_id"])

    async def _catch_up(self) -> None:
        """Watch every local stream, and no longer any that ended."""
        for stream_id in [s for s in self.monitors if not self.rooms.hosts(s)]:
            await self._unwatch(stream_id)
        for stream in await self.rooms.state.all_streams():
            await self._watch(stream)

    async def _watch(self, stream: Stream) -> None:
        track = self.rooms.local_tracks(stream["id"]).get("video")
        if track is None or stream["id"] in self.monitors:
            return  # another hub process hosts it, it has no video, or it is watched already
        if track.mime_type not in DECODERS:
            log.warning("stream %s: no snapshots of %s", stream["id"], track.mime_type)
            return
        site_id = await self.rooms.site_of_stream(stream)
        monitor = Monitor(stream, site_id, KeyframeCatcher(self.rooms, stream["id"], track))
        monitor.task = asyncio.create_task(self._run(monitor), name=f"snapshots-{stream['id']}")
        self.monitors[stream["id"]] = monitor

    async def _unwatch(self, stream_id: str) -> None:
        monitor = self.monitors.pop(stream_id, None)
        if monitor is None:
            return
        await cancel_and_wait(monitor.task)
        state = self.rooms.state
        await state.delete_record("snapshot", stream_id)
        await state.delete_record("snapshot-jpeg", stream_id)
        now = time.time()
        for kind in tuple(monitor.health.active):
            await self._clear(monitor, kind, now)  # an ended stream has no alert left

    async def _run(self, monitor: Monitor) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time()  # the first snapshot at once: a new stream starts with a keyframe anyway
        while True:
            try:
                await self._snapshot(monitor)
            except asyncio.CancelledError:
                raise
            except Unavailable:
                pass  # shared live state is down (logged once, where it is noticed); the next period tries again
            except Exception:
                log.exception("snapshot of stream %s failed", monitor.stream["id"])
            # A fixed rate, whatever a snapshot took (a late one does not delay the next).
            due = max(due + self.period, loop.time())
            await asyncio.sleep(due - loop.time())

    async def _snapshot(self, monitor: Monitor) -> None:
        keyframe = await monitor.catcher.capture(self.capture_timeout)
        if keyframe is None:
            log.info("stream %s sent no keyframe in %.0f s: no snapshot", monitor.stream["id"], self.capture_timeout)
            await self._refresh_alerts(monitor)
            return
        at = time.time()
        mime_type = monitor.catcher.track.mime_type
        loop = asyncio.get_running_loop()
        picture = await loop.run_in_executor(self._pool, render, mime_type, keyframe)
        base = monitor.base()
        meta = base | {"at": at, "width": picture.width, "height": picture.height, "bytes": len(picture.jpeg)}
        state = self.rooms.state
        jpeg = {"jpeg": base64.b64encode(picture.jpeg).decode(), "at": at}
        await state.put_record("snapshot-jpeg", base["stream_id"], jpeg, self.ttl)
        await state.put_record("snapshot", base["stream_id"], meta, self.ttl)
        event = {"type": "snapshot", "at": at, "to": {"covering": monitor.site_id}}
        await state.emit(event | {k: base[k] for k in ("stream_id", "site_id", "camera_id") if k in base})
        raised, cleared = monitor.health.update(picture.measures, at)
        for kind, until in cleared.items():
            await self._clear(monitor, kind, until)
        for kind, since in raised.items():
            alert = self._alert(monitor, kind, since)
            await state.put_record("alert", alert["id"], alert, self.ttl)
            await state.emit({"type": "alert-raised", "alert": alert, "to": {"covering": monitor.site_id}})
            log.info("alert %s raised", alert["id"])
        await self._refresh_alerts(monitor)

    def _alert(self, monitor: Monitor, kind: str, since: float) -> Record:
        return {"id": f"{monitor.stream['id']}:{kind}"} | monitor.base() | {"kind": kind, "since": since}

    async def _refresh_alerts(self, monitor: Monitor) -> None:
        """Rewrite the active alerts so that they outlive their TTL while they hold."""
        for kind, since in monitor.health.active.items():
            alert = self._alert(monitor, kind, since)
            await self.rooms.state.put_record("alert", alert["id"], alert, self.ttl)

    async def _clear(self, monitor: Monitor, kind: str, until: float) -> None:
        since = monitor.health.active.pop(kind, None)
        key = f"{monitor.stream['id']}:{kind}"
        stored = await self.rooms.state.delete_record("alert", key)
        alert = (stored or self._alert(monitor, kind, since or until)) | {"until": until}
        await self.rooms.state.emit({"type": "alert-cleared", "alert": alert, "to": {"covering": monitor.site_id}})
        log.info("alert %s cleared", key)
