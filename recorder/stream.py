"""Recording one published stream: a sink per track and a writer thread.

`TrackRecorder.push` runs in the hub's packet receive path, so it only
copies what it needs into a queue. The stream's writer thread assembles
frames, cuts segments at keyframes and remuxes them (`segments.py`).
Audio and video of a stream share each segment file, so a stream plays
back as one media element.

The writer handles the tracks' frames in timestamp order, not in arrival
order. A publisher's audio and video reach the hub with an offset that
varies (network jitter; a busy sender falling behind on one track), so
audio of the last moments of a segment often arrives after the video
keyframe that starts the next one. Taken in arrival order, that audio came
after its segment was closed and was lost at every cut.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from aiortc.rtp import RtpPacket

from hub.media.forward import Outgoing, Streams, Track
from hub.media.frames import Frame, FrameAssembler, RtpIn

from .segments import CODECS, SegmentWriter, TrackSpec, h264_parameter_sets, suffix, video_size

log = logging.getLogger(__name__)

#: Packets a stream may have queued for its writer before it drops and resyncs.
MAX_QUEUED = 20_000
#: Seconds between keyframe requests of a recorder that lost a frame.
RESYNC_ASK = 1.0
#: Seconds of one track's frames held back, at most, while another track, still sending, is behind it.
MAX_AHEAD = 5.0
#: Seconds of other tracks' packets without one of a track, after which it no longer holds them back
#: (stopped, or muted without sending silence).
SILENT = 2.0


def recordable(track: Track) -> bool:
    return track.mime_type in CODECS


@dataclass
class Segment:
    path: str  #: relative to the recording directory
    start: float  #: seconds from the stream's start
    duration: float
    sha256: str
    bytes: int


class TrackRecorder:
    """The sink the recorder subscribes to one track of a stream."""

    def __init__(self, stream: StreamRecorder, kind: str) -> None:
        self.stream = stream
        self.kind = kind

    def push(self, packet: RtpPacket, shared: Outgoing) -> None:
        self.stream.enqueue(
            self.kind,
            RtpIn(packet.sequence_number, packet.timestamp, packet.marker, packet.payload, time.time()),
        )

    def close(self) -> None:
        self.stream.track_closed(self.kind)


class StreamRecorder:
    """Writes one stream's tracks into numbered segment files of its own directory."""

    def __init__(
        self,
        root: Path,
        folder: str,
        streams: Streams,
        stream_id: str,
        tracks: dict[str, Track],
        segment_seconds: float,
        on_started: Callable[[float, dict[str, object]], None],
        on_segment: Callable[[Segment], None],
    ) -> None:
        self.folder = folder
        self._dir = root / folder
        self._dir.mkdir(parents=True, exist_ok=True)
        self._streams = streams
        self._stream_id = stream_id
        self._tracks = {kind: t for kind, t in tracks.items() if recordable(t)}
        self._segment_seconds = segment_seconds
        self._on_started = on_started
        self._on_segment = on_segment
        self._loop = asyncio.get_running_loop()
        self._queue: queue.Queue[tuple[str, RtpIn] | None] = queue.Queue(MAX_QUEUED)
        self._assemblers = {kind: FrameAssembler(s.codec) for kind, s in self._tracks.items()}  # type: ignore[arg-type]
        self._open_tracks = set(self._tracks)
        self._resync = False
        self.dropped_packets = 0
        self.frames_written = 0
        self.late_frames = 0  #: frames that came after the segment of their time was closed
        self.repeated_frames = 0  #: audio packets with a timestamp not after the last one written
        # Writer-thread state.
        self._writer: SegmentWriter | None = None
        self._index = 0
        self._start_wall: float | None = None
        self._bases: dict[str, int] = {}  # kind -> unwrapped RTP timestamp at stream time 0
        self._last_ts: dict[str, int] = {}
        self._clocks = {kind: CODECS[s.mime_type][1] for kind, s in self._tracks.items()}
        #: Frames placed on the stream's timeline, waiting to be written in timestamp order: (pts, frame).
        self._held: dict[str, collections.deque[tuple[int, Frame]]] = {k: collections.deque() for k in self._tracks}
        self._heard: dict[str, float] = {}  # kind -> arrival of its latest packet
        self._now = 0.0  # the arrival of the latest packet
        self._seg_start = 0.0  # seconds from stream start
        self._keyframe_asked = False
        self._keyframe_held_at = 0.0  # stream time of the latest video keyframe held
        self._last_ask = 0.0
        self._size = (0, 0)
        self._thread = threading.Thread(target=self._run, name=f"recorder-{folder}", daemon=True)
        self._sinks = [TrackRecorder(self, kind) for kind in self._tracks]

    @property
    def tracks(self) -> list[str]:
        return sorted(self._tracks)

    def start(self) -> None:
        self._thread.start()
        for sink in self._sinks:
            if self._streams.subscribe(self._stream_id, sink.kind, sink) is None:
                sink.close()  # the stream ended before the recorder started
        if "video" in self._tracks:
            self._tracks["video"].request_keyframe()

    def enqueue(self, kind: str, packet: RtpIn) -> None:
        try:
            self._queue.put_nowait((kind, packet))
        except queue.Full:
            # The disk cannot keep up: lose packets, not the hub's time.
            self.dropped_packets += 1
            self._resync = True

    def track_closed(self, kind: str) -> None:
        self._open_tracks.discard(kind)
        if not self._open_tracks:
            self._queue.put(None)

    def stop(self) -> None:
        for sink in self._sinks:
            self._streams.unsubscribe(self._stream_id, sink.kind, sink)
            sink.close()

    async def wait(self) -> None:
        await asyncio.to_thread(self._thread.join)

    # -- writer thread -------------------------------------------------------

    def _run(self) -> None:
        try:
            while (item := self._queue.get()) is not None:
                kind, packet = item
                # Silence is judged by the other track's arrivals, not the clock: a writer thread that
                # fell behind does not take its backlog for silence, and when the whole publisher
                # stalls, holding its frames costs nothing.
                self._now = self._heard[kind] = packet.arrival
                if self._resync:
                    self._resync = False
                    for assembler in self._assemblers.values():
                        assembler.waiting_keyframe = assembler.video
                    self._ask_keyframe()
                assembler = self._assemblers[kind]
                for frame in assembler.add(packet):
                    self._hold(kind, frame)
                self._release()
                if assembler.waiting_keyframe and time.monotonic() - self._last_ask > RESYNC_ASK:
                    self._ask_keyframe()  # lost a frame: nothing decodes until the next keyframe
            self._release(flush=True)
        except Exception:
            log.exception("recording of %s failed", self.folder)
        finally:
            self._finish_segment()
            dropped = {kind: a.dropped_frames for kind, a in self._assemblers.items()}
            log.info(
                "recorded %s: %d frames written, frames dropped %s, late %d, repeated %d, packets dropped %d",
                self.folder,
                self.frames_written,
                dropped,
                self.late_frames,
                self.repeated_frames,
                self.dropped_packets,
            )

    def _hold(self, kind: str, frame: Frame) -> None:
        """Place a frame on the stream's timeline and queue it for `_release`."""
        clock = self._clocks[kind]
        leader = "video" if "video" in self._tracks else "audio"
        if self._start_wall is None:
            if kind != leader:
                return  # a stream starts with its first (key)frame of video
            self._start_wall = frame.arrival
            if kind == "video":
                self._size = video_size(self._tracks["video"].mime_type, frame.data)
            self._on_started(frame.arrival, {"width": self._size[0], "height": self._size[1]})
        if kind not in self._bases:
            # A track joining later is placed by its arrival time; there is
            # no RTCP sender-report sync in the hub to do better.
            self._bases[kind] = frame.timestamp - round((frame.arrival - self._start_wall) * clock)
        pts = frame.timestamp - self._bases[kind]
        self._held[kind].append((pts, frame))
        if kind == "video":
            self._want_cut(pts / clock, frame.keyframe)

    def _want_cut(self, seconds: float, keyframe: bool) -> None:
        """Ask for the keyframe that will cut the next segment as its video arrives, not once it is
        written: frames held back for a lagging track would delay the cut by as much."""
        due_at = self._seg_start + self._segment_seconds
        if keyframe:
            self._keyframe_held_at = seconds
        elif seconds >= due_at and self._keyframe_held_at < due_at and not self._keyframe_asked:
            self._ask_keyframe()

    def _release(self, flush: bool = False) -> None:
        """Write held frames, earliest first, as long as no other track can still bring an earlier one."""
        while heads := {kind: held[0][0] / self._clocks[kind] for kind, held in self._held.items() if held}:
            kind = min(heads, key=heads.__getitem__)
            held = self._held[kind]
            ahead = (held[-1][0] - held[0][0]) / self._clocks[kind]
            if not flush and ahead < MAX_AHEAD and any(self._may_send_earlier(other) for other in self._held):
                return
            pts, frame = held.popleft()
            self._write(kind, frame, pts)

    def _may_send_earlier(self, kind: str) -> bool:
        """Whether a track has no frame waiting but is still sending: its next frame may be earlier."""
        return (
            not self._held[kind]
            and kind in self._bases
            and kind in self._open_tracks
            and self._now - self._heard.get(kind, 0.0) < SILENT
        )

    def _write(self, kind: str, frame: Frame, pts: int) -> None:
        clock = self._clocks[kind]
        leader = "video" if "video" in self._tracks else "audio"
        seconds = pts / clock
        if kind == leader:
            elapsed = seconds - self._seg_start
            due = self._writer is None or elapsed >= self._segment_seconds
            if due and (frame.keyframe or kind == "audio"):
                self._finish_segment()
                self._open_segment(seconds, frame)
        if self._writer is None:
            return
        local = pts - round(self._seg_start * clock)
        if local < 0:
            self.late_frames += 1  # held back less than the other track lagged
            return
        previous = self._last_ts.get(kind)
        if previous is not None and frame.timestamp <= previous:
            self.repeated_frames += 1  # a reordered or repeated audio packet: the muxer takes no step back
            return
        usual = clock // 30 if kind == "video" else clock // 50
        duration = frame.timestamp - previous if previous is not None else usual
        self._last_ts[kind] = frame.timestamp
        self._writer.write(kind, frame.data, local, frame.keyframe, min(duration, 4 * usual))
        self.frames_written += 1

    def _ask_keyframe(self) -> None:
        if "video" in self._tracks:
            self._keyframe_asked = True
            self._last_ask = time.monotonic()
            self._loop.call_soon_threadsafe(self._tracks["video"].request_keyframe)

    def _open_segment(self, seconds: float, frame: Frame) -> None:
        extradata = b""
        if frame.keyframe and "video" in self._tracks:
            mime_type = self._tracks["video"].mime_type
            self._size = video_size(mime_type, frame.data)
            if mime_type == "video/h264":
                extradata = h264_parameter_sets(frame.data)
        self._index += 1
        self._seg_start = seconds
        self._keyframe_asked = False
        specs = [
            TrackSpec(kind, s.mime_type, *self._size, channels=s.codec.channels or 2)  # type: ignore[union-attr]
            for kind, s in self._tracks.items()
        ]
        for spec in specs:
            if spec.kind == "video":
                spec.extradata = extradata
        name = f"{self._index:05d}{suffix([s.mime_type for s in self._tracks.values()])}"
        self._writer = SegmentWriter(self._dir / name, specs)

    def _finish_segment(self) -> None:
        writer, self._writer = self._writer, None
        if writer is None:
            return
        try:
            writer.close()
        except Exception:
            log.exception("closing %s failed", writer.path)
        data = writer.path.read_bytes()
        self._on_segment(
            Segment(
                path=f"{self.folder}/{writer.path.name}",
                start=round(self._seg_start, 3),
                duration=round(writer.end, 3),
                sha256=hashlib.sha256(data).hexdigest(),
                bytes=len(data),
            )
        )
