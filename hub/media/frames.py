"""Whole encoded frames out of RTP packets, as the forwarding path leaves them
(for the recorder and for snapshots).

The hub forwards packets, never frames; a recording needs frames. A video
frame is every packet with one RTP timestamp, ending at the marker bit, with
no sequence gap. A frame still missing a packet after a short wait, and every
frame after it until the next keyframe, is dropped: a decoder cannot use them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from aiortc.codecs import depayload
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from hub.media.forward import is_keyframe_start

#: Seconds a frame with a missing packet waits for its retransmission.
HOLD = 0.3
#: Frames pending at once before the oldest is given up on.
MAX_PENDING = 32


@dataclass(slots=True)
class RtpIn:
    """What a recorder keeps of a packet: the hub owns the packet object."""

    sequence_number: int
    timestamp: int
    marker: bool
    payload: bytes
    arrival: float


@dataclass(slots=True)
class Frame:
    data: bytes
    timestamp: int  #: RTP timestamp, unwrapped to grow past 2**32
    keyframe: bool
    arrival: float


class Unwrapper:
    """Extends 32-bit RTP timestamps so they keep growing across wrap-around."""

    def __init__(self) -> None:
        self._last: int | None = None
        self._extended = 0

    def __call__(self, timestamp: int) -> int:
        if self._last is None:
            self._extended = timestamp
        else:
            delta = (timestamp - self._last) & 0xFFFFFFFF
            self._extended += delta - (1 << 32) if delta & 0x80000000 else delta
        self._last = timestamp
        return self._extended


@dataclass
class _Pending:
    first_arrival: float
    packets: dict[int, RtpIn] = field(default_factory=dict)
    marker: int | None = None

    def ordered(self) -> list[RtpIn] | None:
        """The frame's packets in order, if none is missing."""
        if self.marker is None:
            return None
        first = self.marker
        while (first - 1) & 0xFFFF in self.packets:
            first = (first - 1) & 0xFFFF
        if len(self.packets) != ((self.marker - first) & 0xFFFF) + 1:
            return None
        return [self.packets[(first + i) & 0xFFFF] for i in range(len(self.packets))]


class FrameAssembler:
    """Feeds on packets of one track; returns the frames they complete, in order.

    A frame waits up to `HOLD` seconds for a missing packet: the hub asks the
    publisher to retransmit it (NACK), and the repair arrives through the
    same source.
    """

    def __init__(self, codec: RTCRtpCodecParameters) -> None:
        self.codec = codec
        self.mime_type = codec.mimeType.lower()
        self.video = self.mime_type.startswith("video/")
        self.dropped_frames = 0
        #: True until a keyframe starts the track (and again after a loss).
        self.waiting_keyframe = self.video
        self._unwrap = Unwrapper()
        self._pending: dict[int, _Pending] = {}  # by RTP timestamp, in arrival order
        self._last_seq: int | None = None  # marker packet of the last frame released
        self._last_timestamp: int | None = None  # of the last frame released or given up

    def add(self, packet: RtpIn) -> list[Frame]:
        if not self.video:
            return [Frame(packet.payload, self._unwrap(packet.timestamp), True, packet.arrival)]
        last = self._last_timestamp
        if last is not None and (packet.timestamp == last or _older(packet.timestamp, last)):
            return []  # a late duplicate or retransmission of a frame already dealt with
        pending = self._pending.get(packet.timestamp)
        if pending is None:
            pending = self._pending[packet.timestamp] = _Pending(packet.arrival)
        pending.packets[packet.sequence_number] = packet
        if packet.marker:
            pending.marker = packet.sequence_number
        return self._release(packet.arrival)

    def _release(self, now: float) -> list[Frame]:
        out = []
        while self._pending:
            timestamp, pending = next(iter(self._pending.items()))
            if self._last_timestamp is not None and _older(timestamp, self._last_timestamp):
                # A publisher whose timestamps ran backwards: a frame released after a later
                # one would reach the muxer out of order.
                del self._pending[timestamp]
                self.dropped_frames += 1
                continue
            ordered = pending.ordered()
            follows = (
                ordered is not None
                and self._last_seq is not None
                and ordered[0].sequence_number == (self._last_seq + 1) & 0xFFFF
            )
            expired = now - pending.first_arrival > HOLD or len(self._pending) > MAX_PENDING
            # Once a loss is declared, nothing decodes before the next keyframe: stop waiting.
            if ordered is not None and (follows or expired or self.waiting_keyframe):
                del self._pending[timestamp]
                self._last_timestamp = timestamp
                self._last_seq = pending.marker
                frame = self._frame(timestamp, ordered, follows)
                if frame is not None:
                    out.append(frame)
            elif expired:
                del self._pending[timestamp]  # a packet never came: later frames cannot be decoded
                self._last_timestamp = timestamp
                self.dropped_frames += 1
                self.waiting_keyframe = True
            else:
                break  # wait for the missing packet (or the missing frame) a little longer
        return out

    def _frame(self, timestamp: int, ordered: list[RtpIn], follows: bool) -> Frame | None:
        keyframe = is_keyframe_start(self.mime_type, ordered[0].payload)
        if not keyframe and (self.waiting_keyframe or not follows):
            self.waiting_keyframe = True
            self.dropped_frames += 1
            return None
        try:
            data = b"".join(depayload(self.codec, p.payload) for p in ordered)
        except ValueError:
            # A malformed payload (aiortc's depayloaders raise ValueError): the frame
            # cannot be decoded, nor anything after it until the next keyframe. Raising
            # instead would end the recording that feeds on this stream.
            self.waiting_keyframe = True
            self.dropped_frames += 1
            return None
        self.waiting_keyframe = False
        return Frame(data, self._unwrap(timestamp), keyframe, ordered[0].arrival)


def _older(a: int, b: int) -> bool:
    """Whether RTP timestamp a comes before b (modulo 2**32)."""
    return a != b and (b - a) & 0xFFFFFFFF < 0x80000000
