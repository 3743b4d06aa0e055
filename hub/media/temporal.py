"""VP8 temporal layers: a viewer whose link cannot carry a stream gets its lower frame rates.

A VP8 encoder with temporal scalability (libvpx's `ts_*` settings,
Chromium's L1T2/L1T3) marks each frame with a temporal layer (TID) in the
RTP payload descriptor (RFC 7741 section 4.2): frames of layer 0 refer only
to layer 0, frames of layer n only to layers up to n. So dropping every
frame above some TID leaves a stream the decoder still decodes, at a half or
a quarter of the frame rate. Going back up is safe only at a layer-sync
frame (Y bit: it refers to layer 0 alone) or a keyframe.

A `TemporalFilter` stands between a viewer's `TrackSink` and what feeds it
(the stream's `TrackSource`, or a simulcast `LayerSwitch`): it forwards the
frames up to its `current` layer, moves `current` down to `target` at the
next frame and up one layer at a time at sync frames, and renumbers the
packets it passes (a `SeqMap`) so that the viewer sees no gap where frames
were left out and sends no NACKs for them. Its target follows the viewer's
link as the spatial layers do (hub.media.layers): REMB and loss; with
simulcast, the `LayerSwitch` moves it once the lowest spatial layer is
reached.
"""

from __future__ import annotations

import time

from aiortc import RTCRtpSender
from aiortc.rtp import RtpPacket

from hub.media.forward import Fanout, Outgoing, SeqMap, Sink, is_keyframe_start, vp8_descriptor

# Congestion and climbing follow the spatial layers' rule and settings.
from hub.media.layers import HEADROOM, LOSS_SEEN, LOSSY, MAX_HOLD, PROBE, SETTLE, UP_HOLD, watch_feedback
from hub.media.upkeep import Periodic, ticker

#: The descriptor's TID has two bits.
TOP = 3

_WINDOW = 1.0


def vp8_temporal(payload: bytes) -> tuple[int, bool] | None:
    """(TID, layer sync) from a VP8 payload descriptor, or None without a T bit."""
    descriptor = vp8_descriptor(payload)
    if descriptor is None or descriptor[1] is None or not payload[1] & 0x20:  # T
        return None
    pos = descriptor[1]
    if len(payload) <= pos:
        return None
    return payload[pos] >> 6, bool(payload[pos] & 0x20)


class TemporalFilter:
    """One viewer's temporal layers of a VP8 stream: a `Sink` of what feeds
    the viewer and the `Fanout` of the viewer's `TrackSink`."""

    kind = "video"

    def __init__(self, upstream: Fanout) -> None:
        self.sinks: set[Sink] = set()
        self.upstream = upstream
        #: The highest TID the stream has shown; None: not temporally layered (so far).
        self.top: int | None = None
        #: The highest TID forwarded now, and the one wanted.
        self.current = TOP
        self.target = TOP
        #: Frames not forwarded.
        self.dropped_frames = 0
        self._seqs = SeqMap(0)
        self._frame: tuple[int, int] | None = None  # (ssrc, timestamp) of the frame being decided
        self._passing = True
        self._bytes = [0] * (TOP + 1)
        self._window_start = time.monotonic()
        #: Bits per second the publisher sends in each layer, over the last second.
        self.bitrates = [0] * (TOP + 1)
        # The viewer's link, for a filter that follows it itself (no simulcast).
        self.estimate: int | None = None
        self.loss = 0.0
        self._reserve = 0
        self._changed_at = 0.0
        self._calm_since = time.monotonic()
        self._probe: tuple[int, float] | None = None
        self._holds: dict[int, float] = {}
        self._timer: Periodic | None = None
        upstream.sinks.add(self)

    @property
    def mime_type(self) -> str:
        return self.upstream.mime_type

    @property
    def layer(self) -> int | None:
        """The highest TID the viewer gets; None for a stream without temporal layers."""
        return None if self.top is None else min(self.current, self.top)

    def request_keyframe(self) -> None:
        self.upstream.request_keyframe()

    def set_target(self, tid: int) -> None:
        self.target = max(0, min(tid, TOP))

    # -- the packets ---------------------------------------------------------

    def push(self, packet: RtpPacket, shared: Outgoing) -> None:
        if self.top is None and vp8_temporal(packet.payload) is None:
            # No temporal layers (yet): as it came. The map below starts at
            # the first layered packet with no shift, so numbers stay the same.
            for sink in tuple(self.sinks):
                sink.push(packet, shared)
            return
        number = packet.sequence_number
        out = self._seqs.next(number, packet.ssrc)
        if out < 0:
            # Reordered or retransmitted: out under its number, unless it was
            # left out or belongs to a layer the viewer does not get now.
            late = self._seqs.late(number)
            info = vp8_temporal(packet.payload)
            if late is None or (info is not None and info[0] > self.current):
                return
            out = late
        elif not self._admit(packet):
            self._seqs.drop(number)
            return
        if out != number:
            packet = RtpPacket(
                payload_type=packet.payload_type,
                marker=packet.marker,
                sequence_number=out,
                timestamp=packet.timestamp,
                ssrc=packet.ssrc,
                payload=packet.payload,
            )
        for sink in tuple(self.sinks):
            sink.push(packet, shared)

    def _admit(self, packet: RtpPacket) -> bool:
        """Whether a new packet goes out: decided once per frame, at the first packet seen of it."""
        info = vp8_temporal(packet.payload)
        if info is not None:
            self._count(info[0], len(packet.payload))
        frame = (packet.ssrc, packet.timestamp)
        if frame == self._frame:
            return self._passing
        self._frame = frame
        if info is None:
            self._passing = True
            return True
        tid, sync = info
        if self.top is None or tid > self.top:
            self.top = tid
        if is_keyframe_start(self.mime_type, packet.payload):
            self.current = self.target  # a keyframe refers to nothing
        elif self.target < self.current:
            self.current = self.target  # lower layers never refer to higher ones
        elif self.current < tid <= self.target and tid == self.current + 1 and sync:
            self.current = tid
        self._passing = tid <= self.current or is_keyframe_start(self.mime_type, packet.payload)
        if not self._passing:
            self.dropped_frames += 1
        return self._passing

    def _count(self, tid: int, size: int) -> None:
        self._bytes[tid] += size
        now = time.monotonic()
        if now - self._window_start >= _WINDOW:
            self.bitrates = [int(b * 8 / (now - self._window_start)) for b in self._bytes]
            self._bytes = [0] * (TOP + 1)
            self._window_start = now

    def bitrate(self, tid: int) -> int:
        """Bits per second of the layers up to `tid`."""
        return sum(self.bitrates[: tid + 1])

    # -- the choice ----------------------------------------------------------

    def follow(self, sender: RTCRtpSender, audio_reserve: int) -> None:
        """Follow the viewer's link itself (a stream without simulcast)."""
        self._reserve = audio_reserve
        watch_feedback(sender, self._on_estimate, self._on_loss)
        self._tick()
        # Re-decided at every tick of the process's shared timer (one wake-up for all viewers).
        self._timer = ticker().every(self._tick)

    def _on_estimate(self, bitrate: int) -> None:
        self.estimate = bitrate

    def _on_loss(self, loss: float) -> None:
        self.loss = loss

    def _tick(self) -> None:
        self.decide(time.monotonic(), self.estimate, self.loss, self._reserve)

    def decide(self, now: float, estimate: int | None, loss: float, reserve: int) -> bool:
        """Move `target` down at congestion, up one layer after a calm spell
        (held back longer after each climb that failed), as the spatial
        layers do. False when the link is congested at layer 0 already, or
        calm with every layer sent: the caller may then act on the spatial layer."""
        if self.top is None:
            return False
        if now - self._changed_at < SETTLE:
            return True
        target = min(self.target, self.top)
        budget = None if estimate is None else (estimate - reserve) * HEADROOM
        if loss > LOSSY or (budget is not None and budget < self.bitrate(target) and loss >= LOSS_SEEN):
            self._calm_since = now
            if self._probe is not None and self._probe[0] == target and now - self._probe[1] < PROBE:
                self._holds[target] = min(MAX_HOLD, self._holds.get(target, UP_HOLD) * 2)
            self._probe = None
            if target == 0:
                return False
            fits = [t for t in range(target) if budget is None or self.bitrate(t) <= budget]
            lower = fits[-1] if fits else 0
            self.set_target(min(lower, target - 1) if loss > LOSSY else lower)
            self._changed_at = now
            return True
        if self._probe is not None and now - self._probe[1] >= PROBE:
            self._holds.pop(self._probe[0], None)  # the climb held
            self._probe = None
        if target >= self.top:
            self.target = TOP  # every layer, including any the stream adds later
            return False
        if now - self._calm_since >= self._holds.get(target + 1, UP_HOLD):
            self.set_target(target + 1)
            self._calm_since = self._changed_at = now
            self._probe = (target + 1, now)
        return True

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self.upstream.sinks.discard(self)
        for sink in tuple(self.sinks):
            sink.close()
