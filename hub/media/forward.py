"""RTP packet-level forwarding between aiortc peer connections.

This is the one module that works below aiortc's public API (pinned in
pyproject.toml). aiortc only knows receivers that decode and senders that
encode; an SFU must do neither. So:

* a `TrackSource` takes over an `RTCRtpReceiver`'s RTP handler: it keeps
  aiortc's receive statistics (for RTCP receiver reports), RTX unwrapping,
  NACK generation and REMB, then hands each packet to its sinks - no jitter
  buffer, no depayloading, no decoder;
* a `TrackSink` takes over an `RTCRtpSender`'s RTP loop: it rewrites SSRC,
  payload type, sequence number and timestamp for its viewer, keeps the
  sender's history (so NACKs are answered) and counters (so sender reports
  are right), and turns the viewer's PLI/FIR into a throttled keyframe
  request to the publisher.

Each sink has a bounded queue drained by its own task: a slow viewer loses
its own packets, then waits for the next keyframe, never holding up others.

Two paths send a packet to a track's viewers (`use_path`, the setting
HUB_FORWARD): "python" decides, rewrites, protects and sends viewer by
viewer in `TrackSink.push`; "c" (the default where `_fastsend` is built)
does all of that for every viewer in one compiled call per packet
(`_fastsend.forward`), on per-viewer state of its own (`_fastsend.Viewer`:
the sink's sequence map, counters and route), and leaves to `push` the
viewers that need judgment: not connected yet, waiting for a keyframe,
behind (bytes queued in the transport), reached through TURN, or behind a
layer switch or temporal filter. Both use the viewers' own SRTP contexts,
so retransmissions and RTCP (always through Python) keep one consistent
stream per viewer.
"""

from __future__ import annotations

import asyncio
import logging
import random
import struct
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

from aioice.ice import StunProtocol
from aiortc import RTCRtpReceiver, RTCRtpSender, RTCRtpTransceiver
from aiortc.codecs import is_rtx
from aiortc.rtcdtlstransport import State as DtlsState
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtcrtpreceiver import NackGenerator, StreamStatistics
from aiortc.rtp import (
    RTCP_PSFB_APP,
    AnyRtcpPacket,
    RtcpByePacket,
    RtcpPsfbPacket,
    RtcpReceiverInfo,
    RtcpRrPacket,
    RtcpSdesPacket,
    RtcpSenderInfo,
    RtcpSourceInfo,
    RtcpSrPacket,
    RtpPacket,
    pack_header_extensions,
    pack_remb_fci,
    unwrap_rtx,
)
from aiortc.utils import random16, random32

from hub.media import door
from hub.media.counters import COUNTERS
from hub.media.upkeep import ticker

try:
    from hub.media import _fastsend
except ImportError:  # not built (setup.py marks it optional): the Python path only
    _fastsend = None

log = logging.getLogger(__name__)
_pack_header = struct.Struct("!BBHII").pack

#: The settings HUB_FORWARD takes: see the module's docstring.
FORWARD_PATHS = ("c", "python")
#: `_fastsend` while the "c" path is on, else None.
_compiled: Any = None


def use_path(path: str) -> str:
    """Switch this process's send path for the sinks made from now on; returns
    the path in use: "c" falls back to "python" (one log line) where the
    extension is not built."""
    global _compiled
    if path not in FORWARD_PATHS:
        raise ValueError(f"forward path must be one of {FORWARD_PATHS}, not {path!r}")
    if path == "c" and _fastsend is None:
        log.warning("hub.media._fastsend is not built: forwarding through Python")
        path = "python"
    if path == "c" and _compiled is None:
        assert _fastsend.HISTORY == HISTORY, "hub.media._fastsend was built for another HISTORY: rebuild it"
        _fastsend.bind(door.srtp_function("srtp_protect"), TrackSink)
    _compiled = _fastsend if path == "c" else None
    return path


def current_path() -> str:
    return "c" if _compiled is not None else "python"


#: RTCP a receive path sends without awaiting it (NACK, REMB): held until sent.
_sending: set[asyncio.Task[None]] = set()


def _send_soon(send: Coroutine[Any, Any, None]) -> None:
    task = asyncio.ensure_future(send)
    _sending.add(task)
    task.add_done_callback(_sending.discard)


class Sink(Protocol):
    """Whatever takes one track's packets: a viewer's sender (`TrackSink`),
    the recorder, the snapshot taker and, next, a relay to another hub.

    `push` runs inside the publisher's receive path: it must not block or
    await, and a sink that raises is closed. `close` means the track ended.
    """

    def push(self, packet: RtpPacket, shared: Outgoing) -> None: ...

    def close(self) -> None: ...


class Track(Protocol):
    """What a subscriber may know of a track and ask of it."""

    @property
    def kind(self) -> str: ...

    @property
    def codec(self) -> RTCRtpCodecParameters | None: ...

    @property
    def mime_type(self) -> str: ...

    def request_keyframe(self) -> None: ...


class Fanout(Protocol):
    """What a `TrackSink` takes its packets from: a `TrackSource`, or a
    viewer's choice among a simulcast stream's layers (hub.media.layers)."""

    kind: str
    sinks: set[Sink]

    @property
    def mime_type(self) -> str: ...

    def request_keyframe(self) -> None: ...


class Streams(Protocol):
    """The door through which a sink subscribes to a track hosted here."""

    def subscribe(self, stream_id: str, kind: str, sink: Sink, width: int = 0) -> Track | None:
        """`width`: a sink that needs no more than that many pixels across
        gets the lowest simulcast layer that wide (hub.media.layers)."""
        ...

    def unsubscribe(self, stream_id: str, kind: str, sink: Sink) -> None: ...


#: Codecs the hub forwards: their packets go out exactly as they came in.
PASSTHROUGH_CODECS = ("video/vp8", "video/h264", "audio/opus", "audio/pcmu", "audio/pcma")


def is_keyframe_start(mime_type: str, payload: bytes) -> bool:
    """Whether an RTP payload is the first packet of a keyframe.

    A viewer may only start (or restart after loss) at such a packet: every
    later frame of VP8 or H.264 refers back to it.
    """
    if not payload:
        return False
    if mime_type == "video/vp8":
        return _vp8_keyframe_start(payload)
    if mime_type == "video/h264":
        return _h264_keyframe_start(payload)
    return True


def _vp8_keyframe_start(payload: bytes) -> bool:
    pos = vp8_payload_start(payload)
    return pos is not None and not payload[pos] & 0x01  # P bit 0 = keyframe


def vp8_payload_start(payload: bytes) -> int | None:
    """Where a VP8 frame begins in the first RTP packet of that frame, or
    None for any other packet."""
    if not payload or not payload[0] & 0x10 or payload[0] & 0x07:  # S bit set and partition index 0
        return None
    descriptor = vp8_descriptor(payload)
    return descriptor[0] if descriptor is not None and len(payload) > descriptor[0] else None


def vp8_descriptor(payload: bytes) -> tuple[int, int | None] | None:
    """The VP8 payload descriptor (RFC 7741 section 4.2) of an RTP payload:
    (its length, where its TID/KEYIDX byte is or None), or None when cut short."""
    if not payload:
        return None
    if not payload[0] & 0x80:  # X: extension byte follows
        return 1, None
    if len(payload) < 2:
        return None
    ext = payload[1]
    pos = 2
    if ext & 0x80:  # I: picture id, one or two bytes
        if len(payload) <= pos:
            return None
        pos += 2 if payload[pos] & 0x80 else 1
    if ext & 0x40:  # L: TL0PICIDX
        pos += 1
    if ext & 0x30:  # T or K: TID/KEYIDX byte
        return pos + 1, pos
    return pos, None


# A viewer can only start decoding H.264 where a sequence parameter set
# arrives (it precedes the IDR slice in every keyframe an encoder like
# Chromium's or x264's emits); an IDR alone is useless without it.
_H264_SPS = 7


def _h264_keyframe_start(payload: bytes) -> bool:
    # RFC 6184 section 5: single NAL, STAP-A (24) or FU-A (28).
    nal_type = payload[0] & 0x1F
    if nal_type == 24:
        pos = 1
        while pos + 2 < len(payload):
            size = int.from_bytes(payload[pos : pos + 2], "big")
            if payload[pos + 2] & 0x1F == _H264_SPS:
                return True
            pos += 2 + size
        return False
    if nal_type == 28:
        return len(payload) > 1 and bool(payload[1] & 0x80) and payload[1] & 0x1F == _H264_SPS
    return nal_type == _H264_SPS


def restrict_codecs(transceiver: RTCRtpTransceiver, codec: RTCRtpCodecParameters) -> None:
    """Negotiate exactly `codec` (and its RTX) on a transceiver being answered.

    aiortc fixes an answer's codecs while applying the remote offer; this
    narrows them to the one codec the stream carries, so the answer cannot
    pick another one (aiortc otherwise takes the first codec in common).
    """
    chosen = [codec]
    for rtx in transceiver._codecs:
        if is_rtx(rtx) and rtx.parameters.get("apt") == codec.payloadType:
            chosen.append(rtx)
    transceiver._codecs = chosen


def offered_codecs(transceiver: RTCRtpTransceiver) -> list[RTCRtpCodecParameters]:
    """The media codecs both sides can use, in the offerer's order."""
    return [c for c in transceiver._codecs if not is_rtx(c)]


async def _ignore_rtp(packet: RtpPacket, arrival_time_ms: int) -> None:
    """A receiver's RTP handler once its source has taken another receiver."""


def _hand(packet: RtpPacket, shared: Outgoing, pushes: list[Callable[[RtpPacket, Outgoing], None]]) -> None:
    for push in pushes:
        try:
            push(packet, shared)
        except Exception:  # one broken viewer must not stop the others
            log.exception("dropping a viewer whose send failed")
            push.__self__.close()  # type: ignore[attr-defined]


class TrackSource:
    """One published track: receives its RTP packets and fans them out.

    Its packets come from a publisher's `RTCRtpReceiver`, or, with no
    receiver, from the hub itself through `forward` (a camera it pulls);
    such a source's keyframe requests go to `on_keyframe_request`.
    """

    def __init__(
        self,
        receiver: RTCRtpReceiver | None,
        kind: str,
        keyframe_interval: float,
        on_keyframe_request: Callable[[], None] | None = None,
    ) -> None:
        self.kind = kind
        self.codec: RTCRtpCodecParameters | None = None
        self.sinks: set[Sink] = set()
        self._receiver = receiver
        self._on_keyframe_request = on_keyframe_request
        self._media_ssrc: int | None = None
        self._keyframe_interval = keyframe_interval
        self._last_keyframe_request = 0.0
        self._pending_keyframe: asyncio.TimerHandle | None = None
        self.keyframe_requests = 0
        if receiver is not None:
            self.take(receiver)

    def take(self, receiver: RTCRtpReceiver) -> None:
        """Take packets from `receiver`, and none from the one before: a
        relay pulled again keeps its sources, and with them its viewers."""
        previous, self._receiver = self._receiver, receiver
        if previous is not None and previous is not receiver:
            previous._handle_rtp_packet = _ignore_rtp  # type: ignore[method-assign]
            door.take_rtp(previous, lambda packet, arrival_time_ms: None)
        self._media_ssrc = None  # a keyframe request waits for the new run's first packet
        receiver._handle_rtp_packet = self._handle_rtp_packet  # type: ignore[method-assign]
        door.take_rtp(receiver, self.receive, self._express)

    @property
    def mime_type(self) -> str:
        return self.codec.mimeType.lower() if self.codec else ""

    async def _handle_rtp_packet(self, packet: RtpPacket, arrival_time_ms: int) -> None:
        # A packet that came through aiortc's queue (hub.media.door takes the others).
        self.receive(packet, arrival_time_ms)

    def receive(self, packet: RtpPacket, arrival_time_ms: int) -> None:
        """One RTP packet from the publisher; never awaits (RTCP it makes is sent in a task)."""
        # Mirrors RTCRtpReceiver._handle_rtp_packet up to the point where it
        # would depayload and decode.
        r = self._receiver
        assert r is not None
        codecs: dict[int, RTCRtpCodecParameters] = r._RTCRtpReceiver__codecs  # type: ignore[attr-defined]
        codec = codecs.get(packet.payload_type)
        if codec is None:
            return
        streams = r._RTCRtpReceiver__remote_streams  # type: ignore[attr-defined]
        if packet.ssrc not in streams:
            streams[packet.ssrc] = StreamStatistics(codec.clockRate)
        streams[packet.ssrc].add(packet)

        estimator = r._RTCRtpReceiver__remote_bitrate_estimator  # type: ignore[attr-defined]
        rtcp_ssrc = r._RTCRtpReceiver__rtcp_ssrc  # type: ignore[attr-defined]
        if estimator is not None and packet.extensions.abs_send_time is not None:
            remb = estimator.add(
                abs_send_time=packet.extensions.abs_send_time,
                arrival_time_ms=arrival_time_ms,
                payload_size=len(packet.payload) + packet.padding_size,
                ssrc=packet.ssrc,
            )
            if remb is not None and rtcp_ssrc is not None:
                remb_packet = RtcpPsfbPacket(fmt=RTCP_PSFB_APP, ssrc=rtcp_ssrc, media_ssrc=0, fci=pack_remb_fci(*remb))
                _send_soon(r._send_rtcp(remb_packet))

        if is_rtx(codec):
            original_ssrc = self._repaired_ssrc(packet)
            apt = codec.parameters.get("apt")
            if original_ssrc is None or len(packet.payload) < 2 or apt not in codecs:
                return
            packet = unwrap_rtx(packet, payload_type=apt, ssrc=original_ssrc)  # type: ignore[arg-type]
            codec = codecs[apt]  # type: ignore[index]
        elif not packet.payload:
            return  # padding-only probe

        nack = self._nack_generator(packet)
        if nack is not None and nack.add(packet):
            _send_soon(r._send_rtcp_nack(packet.ssrc, sorted(nack.missing)))
        self._deliver(packet, codec)

    # What a source of several RTP streams (simulcast, hub.media.layers) does
    # its own way: which stream an RTX packet repairs, loss per stream, and
    # where a packet goes.

    def _repaired_ssrc(self, rtx: RtpPacket) -> int | None:
        assert self._receiver is not None
        ssrc: int | None = self._receiver._RTCRtpReceiver__rtx_ssrc.get(rtx.ssrc)  # type: ignore[attr-defined]
        return ssrc

    def _nack_generator(self, packet: RtpPacket) -> NackGenerator | None:
        nack: NackGenerator | None = self._receiver._RTCRtpReceiver__nack_generator  # type: ignore[union-attr]
        return nack

    def _deliver(self, packet: RtpPacket, codec: RTCRtpCodecParameters) -> None:
        self._media_ssrc = packet.ssrc
        self.codec = codec
        self.forward(packet)

    def _express(self, ssrc: int) -> tuple[Any, ...] | None:
        """What a pull socket's express lane needs to do `receive`'s work
        for `ssrc` in C (hub.media.door.lane; it checks what it depends on
        before each packet): this class's own receive, on the compiled
        send path (a packet with abs-send-time, for aiortc's bitrate
        estimator, it leaves to `receive`)."""
        r = self._receiver
        codec = self.codec
        if type(self) is not TrackSource or _compiled is None or r is None or codec is None or is_rtx(codec):
            return None
        stats = r._RTCRtpReceiver__remote_streams.get(ssrc)  # type: ignore[attr-defined]
        nack = r._RTCRtpReceiver__nack_generator  # type: ignore[attr-defined]
        if stats is None or (nack is None) != (self.kind == "audio"):  # aiortc keeps no NACK state for audio
            return None
        return (self, stats, nack, codec.payloadType, codec, _compiled.forward, Outgoing)

    def forward(self, packet: RtpPacket) -> None:
        """Hand one packet to every sink; never awaits."""
        COUNTERS.packets_received += 1
        if not self.sinks:
            return
        shared = Outgoing.now()
        if _compiled is None:
            _hand(packet, shared, [sink.push for sink in tuple(self.sinks)])
            return
        rest, decide, failed, packets, octets = _compiled.forward(tuple(self.sinks), packet, shared)
        COUNTERS.packets_forwarded += packets
        COUNTERS.bytes_forwarded += octets
        self._forwarded(packet, shared, rest, decide, failed)

    def _forwarded(
        self, packet: RtpPacket, shared: Outgoing, rest: list[Sink], decide: list[TrackSink], failed: list[Sink]
    ) -> None:
        """What the compiled fan-out leaves to Python: sinks it could not take, and those it dropped."""
        for sink in failed:
            log.error("dropping a viewer whose send failed (its SRTP context or transport refused a packet)")
            sink.close()
        if rest or decide:
            _hand(packet, shared, [sink.push for sink in rest] + [sink._decide for sink in decide])

    def request_keyframe(self) -> None:
        """Ask the publisher for a keyframe, at most once per interval.

        A request inside the interval is deferred to its end, not dropped,
        so that the viewer who asked still gets its keyframe.
        """
        if self.kind != "video" or self._pending_keyframe is not None:
            return
        wait = self._last_keyframe_request + self._keyframe_interval - time.monotonic()
        if wait <= 0:
            self._send_pli()
        else:
            self._pending_keyframe = asyncio.get_running_loop().call_later(wait, self._send_pli)

    def _send_pli(self) -> None:
        self._pending_keyframe = None
        receiver, ssrc = self._receiver, self._media_ssrc
        if receiver is not None and ssrc is None:
            return  # nothing received yet: no publisher to ask
        self._last_keyframe_request = time.monotonic()
        self.keyframe_requests += 1
        COUNTERS.keyframe_requests += 1
        if receiver is not None and ssrc is not None:
            asyncio.ensure_future(receiver._send_rtcp_pli(ssrc))
        elif self._on_keyframe_request is not None:
            self._on_keyframe_request()

    def close(self) -> None:
        if self._pending_keyframe is not None:
            self._pending_keyframe.cancel()
        for sink in tuple(self.sinks):
            sink.close()


@dataclass
class SinkStats:
    """A sink's counters (on the "c" path its `_fastsend.Viewer` has the same)."""

    packets: int = 0
    #: Payload octets sent, for the sender reports.
    octets: int = 0
    dropped: int = 0
    keyframe_waits: int = 0


#: NACKs can ask for any of this many recent packets of one viewer, and a
#: publisher's packet this many behind the newest still finds its number.
HISTORY = 512
_SLOT = HISTORY - 1  # HISTORY divides 65536, so `seq & _SLOT` survives wraparound

#: Seconds a viewer waits for the keyframe it asked for before asking again:
#: on a lossy link the request, or the keyframe's first packet, can be lost,
#: and the viewer (sent nothing) sees no gap to complain of. Longer than a
#: keyframe takes to cross a slow link, so as not to ask for a second one
#: while the first is on its way.
KEYFRAME_PATIENCE = 1.0


class SeqMap:
    """One viewer's outgoing sequence numbers for a publisher's incoming ones.

    A viewer that skips packets (its socket is behind, it waits for a
    keyframe) must not see a gap: it would NACK packets that never come. So a
    skipped packet consumes no outgoing number, while a gap the publisher's
    own loss left stays a gap (the viewer may rightly NACK it, and the hub
    forwards the publisher's retransmission under the number it reserved).
    A late packet - reordered, or retransmitted by the publisher (RTX
    unwrapped to its original number) - gets the number it had, or is not
    sent if it was skipped. Like mediasoup's SeqManager and Galène's
    packetmap, with a ring of the last `HISTORY` incoming numbers.

    Per packet: `next` gives a packet newer than all before its outgoing
    number (the sink then sends it, or takes the number back with `drop`);
    an older one is looked up with `late`. Where the viewer's stream skips
    or starts (again) at a keyframe, `forget_gap` gives up the losses just
    before: sent late, they would reach the viewer ahead of the picture it
    starts from; and their numbers, so the viewer sees no gap there either.
    """

    __slots__ = ("_top", "_shift", "_ssrc", "_tags", "_outs", "_gap")

    def __init__(self, first: int) -> None:
        #: The newest incoming number; -1 before the first packet.
        self._top = -1
        #: outgoing = (incoming + shift) & 0xFFFF for the newest packets.
        self._shift = first
        self._ssrc = -1
        #: Per slot: the incoming number it holds, and its outgoing number
        #: (-1: skipped).
        self._tags = [-1] * HISTORY
        self._outs = [-1] * HISTORY
        #: The first incoming number of the newest packet's gap (the newest's
        #: own when it left none).
        self._gap = 0

    def next(self, seq: int, ssrc: int) -> int:
        """The outgoing number of `seq` if it is newer than every packet
        before (then noted as sent), else -1."""
        top = self._top
        if ssrc != self._ssrc:
            # First packet, or a source that restarted (a camera the hub
            # reconnected): its numbers continue the viewer's sequence.
            if top >= 0:
                self._shift = (top + self._shift + 1 - seq) & 0xFFFF
                self._tags = [-1] * HISTORY
            self._ssrc = ssrc
            self._gap = seq
        else:
            ahead = (seq - top) & 0xFFFF
            if ahead == 0 or ahead >= 0x8000:
                return -1
            if ahead > 1:
                # Lost upstream, for now: reserve their numbers, in case the
                # publisher retransmits them.
                tags, outs, shift = self._tags, self._outs, self._shift
                for missing in range(max(1, ahead - _SLOT), ahead):
                    n = (top + missing) & 0xFFFF
                    tags[n & _SLOT] = n
                    outs[n & _SLOT] = (n + shift) & 0xFFFF
            self._gap = (top + 1) & 0xFFFF
        self._top = seq
        out = (seq + self._shift) & 0xFFFF
        slot = seq & _SLOT
        self._tags[slot] = seq
        self._outs[slot] = out
        return out

    def drop(self, seq: int) -> None:
        """The newest packet `seq` does not go out: the next one takes its number."""
        self._shift = (self._shift - 1) & 0xFFFF
        self._outs[seq & _SLOT] = -1

    def forget_gap(self) -> int:
        """The losses just before the newest packet never go out, and give
        their numbers back (the viewer's stream skips there, or starts at
        it): the newest packet's outgoing number now (-1: dropped)."""
        tags, outs, top, gap = self._tags, self._outs, self._top, self._gap
        count = (top - gap) & 0xFFFF
        for i in range(max(0, count - _SLOT), count):
            n = (gap + i) & 0xFFFF
            if tags[n & _SLOT] == n:
                outs[n & _SLOT] = -1
        self._gap = top
        self._shift = (self._shift - count) & 0xFFFF
        slot = top & _SLOT
        if outs[slot] >= 0:
            outs[slot] = (outs[slot] - count) & 0xFFFF
        return outs[slot]

    def insert(self) -> int:
        """An outgoing number after the newest packet's for a packet of the
        hub's own (a probe's padding); the publisher's next one follows it."""
        self._shift = (self._shift + 1) & 0xFFFF
        return (self._top + self._shift) & 0xFFFF

    def late(self, seq: int) -> int | None:
        """The outgoing number of an old packet, or None if it must not go out
        (it was skipped, or is older than the ring remembers)."""
        if (self._top - seq) & 0xFFFF >= HISTORY:
            return None
        slot = seq & _SLOT
        if self._tags[slot] != seq:
            return None
        out = self._outs[slot]
        return out if out >= 0 else None


_NTP_EPOCH = 2208988800

#: Seconds between a viewer's sender reports, and a relay pull's receiver
#: reports: RFC 3550 section 6.2's 5 s minimum (aiortc sends one a second),
#: randomized over [0.5, 1.5] of it.
REPORT_INTERVAL = 5.0
#: The first reports after media starts come every second, as aiortc's do:
#: a viewer needs them to line audio up with video soon after it joins.
QUICK_REPORTS = 3


def report_receptions_slowly(receiver: RTCRtpReceiver) -> None:
    """Give `receiver` (a relay's pull: its sender is another hub, which
    needs no loss report a second, NACK repairs its losses) the viewers'
    report pace on the shared tick in place of aiortc's report a second at
    a timer of its own. Call it before the receiver's `receive`, which
    starts the report loop."""
    receiver._run_rtcp = lambda: _receiver_reports(receiver)  # type: ignore[method-assign]


async def _receiver_reports(r: RTCRtpReceiver) -> None:
    """RTCRtpReceiver._run_rtcp's receiver reports, every REPORT_INTERVAL
    (randomized) at the process's shared tick."""
    r._RTCRtpReceiver__rtcp_started.set()  # type: ignore[attr-defined]
    tick = ticker()
    try:
        while True:
            await tick.sleep(REPORT_INTERVAL * (0.5 + random.random()))
            lsr: dict[int, int] = r._RTCRtpReceiver__lsr  # type: ignore[attr-defined]
            lsr_time: dict[int, float] = r._RTCRtpReceiver__lsr_time  # type: ignore[attr-defined]
            reports = []
            for ssrc, stream in r._RTCRtpReceiver__remote_streams.items():  # type: ignore[attr-defined]
                delay = time.time() - lsr_time[ssrc] if ssrc in lsr else 0.0
                reports.append(
                    RtcpReceiverInfo(
                        ssrc=ssrc,
                        fraction_lost=stream.fraction_lost,
                        packets_lost=stream.packets_lost,
                        highest_sequence=stream.max_seq,
                        jitter=stream.jitter,
                        lsr=lsr.get(ssrc, 0),
                        dlsr=int(delay * 65536) if 0 < delay < 65536 else 0,
                    )
                )
            rtcp_ssrc = r._RTCRtpReceiver__rtcp_ssrc  # type: ignore[attr-defined]
            if rtcp_ssrc is not None and reports:
                await r._send_rtcp(RtcpRrPacket(ssrc=rtcp_ssrc, reports=reports))
    except asyncio.CancelledError:
        pass
    r._RTCRtpReceiver__rtcp_exited.set()  # type: ignore[attr-defined]


@dataclass(slots=True)
class Outgoing:
    """What every viewer's copy of one packet shares: the send time, and the
    extension blocks built so far, keyed by the viewers' negotiated layout."""

    abs_send_time: int
    ntp_time: int
    extensions: dict[tuple[tuple[int, bytes], int, int], bytes]

    @classmethod
    def now(cls) -> Outgoing:
        now = time.time()
        # abs-send-time is 6.18 fixed-point seconds of the NTP clock.
        return cls(int(now * 262144) & 0xFFFFFF, int((now + _NTP_EPOCH) * 4294967296), {})


#: (SRTP session, UDP protocol, remote address, (SRTP context address,
#: socket fd, sockaddr) for the compiled path or None).
Route = tuple[Any, Any, tuple[str, int], tuple[int, int, bytes] | None]


def _compiled_route(srtp: Any, protocol: Any, addr: tuple[str, int]) -> tuple[int, int, bytes] | None:
    """What `_fastsend.Viewer` needs to reach a viewer, if the "c" path is on and
    the viewer is reached by plain UDP (TURN frames its data itself)."""
    if _compiled is None or type(protocol) is not StunProtocol:
        return None
    sock = protocol.transport.get_extra_info("socket")
    if sock is None:
        return None
    # The session object stays referenced by the route, so the context lives as long.
    return (door.srtp_context(srtp), sock.fileno(), _compiled.sockaddr(addr[0], addr[1]))


class TrackSink:
    """One viewer's copy of a track, written straight to its socket.

    `push` runs inside the publisher's receive path and never awaits: it
    rewrites the header, encrypts (SRTP) and hands the datagram to the
    viewer's own UDP transport. The bounded queue of each viewer is that
    transport's write buffer: when it holds more than `max_backlog` bytes the
    viewer is behind, so it drops what comes until the next keyframe.
    Nobody else waits for it.

    On the "c" path (`use_path`) its state is a `_fastsend.Viewer` - its
    sequence map and stats - and most packets are decided and sent by
    `_fastsend.forward` without calling `push`; `push` decides for the rest
    on the same state, and (re)binds the viewer's route for the next ones.
    """

    def __init__(self, source: Fanout, sender: RTCRtpSender, max_backlog: int) -> None:
        self.source = source
        self._viewer: Any = _compiled.Viewer(0) if _compiled is not None else None
        self.stats: Any = self._viewer if self._viewer is not None else SinkStats()
        self._sender = sender
        self._max_backlog = max_backlog
        self._closed = asyncio.Event()
        self._history: list[tuple[int, bytes] | None] = [None] * HISTORY
        # Set when aiortc starts the sender, once DTLS is up.
        self._payload_type: int | None = None
        self._ext_layout: tuple[tuple[int, bytes], int, int] = ((0, b""), 0, 0)
        self._ssrc = sender._ssrc
        self._audio = source.kind == "audio"
        self._cached_pair: object = None
        self._cached_route: Route | None = None
        #: What makes the cached route stale, for the compiled path to check
        #: per packet: (nominated pairs, pair, DTLS transport, its connected state).
        self._cached_guard: tuple[dict[int, Any], object, Any, DtlsState] | None = None
        self._seqs: Any = self._viewer if self._viewer is not None else SeqMap(0)
        self._ts_offset = 0
        # Video starts at a keyframe; audio can start anywhere.
        self._waiting_keyframe = source.kind == "video"
        self._asked_keyframe = 0.0  # when this viewer last asked for one
        sender._run_rtp = self._run_rtp  # type: ignore[method-assign]
        sender._run_rtcp = self._run_rtcp  # type: ignore[method-assign]
        sender._send_keyframe = source.request_keyframe  # type: ignore[method-assign]
        sender._retransmit = self._retransmit  # type: ignore[method-assign]
        source.sinks.add(self)

    def push(self, packet: RtpPacket, shared: Outgoing) -> None:
        if self._payload_type is None:
            return  # not connected yet
        viewer = self._viewer
        if viewer is not None:
            sent = viewer.push(packet, shared, self._waiting_keyframe)
            if sent >= 0:  # decided and sent (or not) as `_fastsend.forward` would
                if sent:
                    COUNTERS.packets_forwarded += 1
                    COUNTERS.bytes_forwarded += sent
                return
        self._decide(packet, shared)

    def _decide(self, packet: RtpPacket, shared: Outgoing) -> None:
        """`push` in Python: on the "c" path, for what the compiled one left
        to it (it changed nothing then), on the same state."""
        if self._payload_type is None:
            return
        number = packet.sequence_number
        seqs = self._seqs
        route = self._route()
        if self._viewer is not None and route is not None:
            self._viewer.bind(route, self._cached_guard)
        seq = seqs.next(number, packet.ssrc)
        fresh = seq >= 0
        if not fresh:
            # Reordered, or the publisher's retransmission: it goes out under
            # the number it had (the viewer may be missing it too), never as new.
            late = seqs.late(number)
            if late is None or route is None:
                return
            if self._backlog(route) > self._max_backlog:
                self._dropped()
                return
            seq = late
        elif route is None:
            self._skip(number)
            return
        else:
            if self._waiting_keyframe:
                if not is_keyframe_start(self.source.mime_type, packet.payload):
                    self._skip(number)
                    self._dropped()
                    if time.monotonic() - self._asked_keyframe > KEYFRAME_PATIENCE:
                        self._ask_keyframe()
                    return
                seq = seqs.forget_gap()
                self._waiting_keyframe = False
            if self._backlog(route) > self._max_backlog:
                # This viewer's socket cannot keep up: skip to the next keyframe.
                self._skip(number)
                self._dropped()
                self.stats.keyframe_waits += 1
                self._waiting_keyframe = self.source.kind == "video"
                self._ask_keyframe()
                return
        timestamp = (packet.timestamp + self._ts_offset) & 0xFFFFFFFF
        # Viewers that negotiated the same extensions share one block per packet.
        extensions = shared.extensions.get(self._ext_layout)
        if extensions is None:
            extensions = shared.extensions[self._ext_layout] = self._extensions(
                shared.abs_send_time, packet.extensions.audio_level
            )
        data = (
            _pack_header(
                0x90 if extensions else 0x80,  # version 2, and the X bit when extensions follow
                packet.marker << 7 | self._payload_type,
                seq,
                timestamp,
                self._ssrc,
            )
            + extensions
            + packet.payload
        )
        self._history[seq & _SLOT] = (seq, data)
        self._send(data, route)
        self.stats.packets += 1
        self.stats.octets += len(packet.payload)
        # A late packet's older timestamp would make the sender report run backwards.
        if fresh and (packet.marker or self._audio):  # once a video frame; audio packets are frames, and rarely marked
            self._update_sender_report(timestamp, shared.ntp_time)

    def pad(self, size: int) -> bool:
        """Send an RTP padding-only packet of `size` (<= 255) padding bytes
        after the last frame sent, with that frame's timestamp (as libwebrtc
        pads): a simulcast probe's bytes, which the viewer's decoder never
        sees. False when the viewer is not receiving (not connected yet, at
        a keyframe wait, or behind)."""
        route = self._route()
        if route is None or self._payload_type is None or self._waiting_keyframe or not self.stats.packets:
            return False
        if self._backlog(route) > self._max_backlog:
            return False
        seq = self._seqs.insert()
        extensions = self._extensions(int(time.time() * 262144) & 0xFFFFFF, None)
        timestamp = self._sender._RTCRtpSender__rtp_timestamp  # type: ignore[attr-defined]
        header = _pack_header(0xB0 if extensions else 0xA0, self._payload_type, seq, timestamp, self._ssrc)
        data = header + extensions + bytes(size - 1) + bytes((size,))
        # Never resent (as libwebrtc keeps padding out of its packet history):
        # NACKs for a failed probe's padding would add to the congestion it met.
        self._history[seq & _SLOT] = None
        self._send(data, route)
        return True

    def _skip(self, number: int) -> None:
        """The newest packet does not go out, nor the losses just before it:
        this viewer's stream skips there."""
        self._seqs.drop(number)
        self._seqs.forget_gap()

    def _ask_keyframe(self) -> None:
        self._asked_keyframe = time.monotonic()
        self.source.request_keyframe()

    def _dropped(self) -> None:
        self.stats.dropped += 1
        COUNTERS.packets_dropped += 1

    def _update_sender_report(self, timestamp: int, ntp_time: int) -> None:
        """What aiortc's sender puts in its RTCP sender reports, once a frame."""
        s = self._sender
        s._RTCRtpSender__ntp_timestamp = ntp_time  # type: ignore[attr-defined]
        s._RTCRtpSender__rtp_timestamp = timestamp  # type: ignore[attr-defined]
        s._RTCRtpSender__octet_count = self.stats.octets  # type: ignore[attr-defined]
        s._RTCRtpSender__packet_count = self.stats.packets  # type: ignore[attr-defined]

    def _extensions(self, abs_send_time: int, audio_level: tuple[bool, int] | None) -> bytes:
        """The header extension block (RFC 8285) this viewer negotiated."""
        mid, abs_id, level_id = self._ext_layout
        values = [mid] if mid[0] else []
        if abs_id:
            values.append((abs_id, abs_send_time.to_bytes(3, "big")))
        if level_id and audio_level is not None:
            values.append((level_id, bytes(((0x80 if audio_level[0] else 0) | (audio_level[1] & 0x7F),))))
        profile, body = pack_header_extensions(values)
        return profile.to_bytes(2, "big") + (len(body) // 4).to_bytes(2, "big") + body if body else b""

    def _route(self) -> Route | None:
        """(SRTP session, UDP protocol, remote address, what the compiled
        path needs or None) once DTLS is up.

        Cached: it is asked for every packet, and only changes when ICE
        nominates another candidate pair or DTLS leaves the connected state.
        """
        dtls = self._sender.transport
        pair = dtls.transport._connection._nominated.get(1)
        if pair is None or dtls._state is not DtlsState.CONNECTED:
            self._cached_route = None
            return None
        if self._cached_pair is not pair or self._cached_route is None:
            self._cached_pair = pair
            srtp, protocol, addr = dtls._tx_srtp, pair.protocol, pair.remote_addr
            self._cached_route = (srtp, protocol, addr, _compiled_route(srtp, protocol, addr))
            self._cached_guard = (dtls.transport._connection._nominated, pair, dtls, DtlsState.CONNECTED)
        return self._cached_route

    def _backlog(self, route: Route) -> int:
        """Bytes queued in this viewer's UDP transport, not yet on the wire.
        (The compiled path asks the transport the same, and leaves the packet
        to `push` unless it holds nothing: a datagram written past queued
        ones would overtake them.)"""
        return int(route[1].transport.get_write_buffer_size())

    def _send(self, data: bytes, route: Route) -> None:
        srtp, protocol, addr, _ = route
        # RTCDtlsTransport._send_rtp and aioice's send path, without their
        # four coroutine layers per packet.
        datagram = srtp.protect(data)
        if type(protocol) is StunProtocol:
            protocol.transport.sendto(datagram, addr)
        else:  # TURN and others frame the data themselves
            asyncio.ensure_future(protocol.send_data(datagram, addr))
        COUNTERS.packets_forwarded += 1
        COUNTERS.bytes_forwarded += len(datagram)

    async def _retransmit(self, sequence_number: int) -> None:
        entry = self._history[sequence_number & _SLOT]
        route = self._route()
        if entry is not None and entry[0] == sequence_number and route is not None:
            self._send(entry[1], route)
            COUNTERS.retransmissions += 1

    def close(self) -> None:
        self.source.sinks.discard(self)
        self._payload_type = None
        if self._viewer is not None:
            self._viewer.stop()
        self._closed.set()

    async def _run_rtcp(self) -> None:
        """Replaces the sender's report loop: the same reports, less often, on the shared tick."""
        s = self._sender
        s._RTCRtpSender__rtcp_started.set()  # type: ignore[attr-defined]
        quick = QUICK_REPORTS
        tick = ticker()
        try:
            while True:
                # Each viewer's own random due time, sent at the process's next
                # shared tick: one wake-up sends every report due by then.
                await tick.sleep((1.0 if quick else REPORT_INTERVAL) * (0.5 + random.random()))
                if quick and self.stats.packets:
                    quick -= 1
                await s._send_rtcp(self._sender_report())
        except asyncio.CancelledError:
            pass
        await s._send_rtcp([RtcpByePacket(sources=[self._ssrc])])
        s._RTCRtpSender__rtcp_exited.set()  # type: ignore[attr-defined]

    def _sender_report(self) -> list[AnyRtcpPacket]:
        """An RTCP SR (and SDES CNAME) from what `_update_sender_report` noted."""
        s = self._sender
        ntp_time = s._RTCRtpSender__ntp_timestamp  # type: ignore[attr-defined]
        packets: list[AnyRtcpPacket] = [
            RtcpSrPacket(
                ssrc=self._ssrc,
                sender_info=RtcpSenderInfo(
                    ntp_timestamp=ntp_time,
                    rtp_timestamp=s._RTCRtpSender__rtp_timestamp,  # type: ignore[attr-defined]
                    packet_count=s._RTCRtpSender__packet_count & 0xFFFFFFFF,  # type: ignore[attr-defined]
                    octet_count=s._RTCRtpSender__octet_count & 0xFFFFFFFF,  # type: ignore[attr-defined]
                ),
            )
        ]
        # What aiortc's sender matches the viewer's receiver reports with, for its round-trip time.
        s._RTCRtpSender__lsr = (ntp_time >> 16) & 0xFFFFFFFF  # type: ignore[attr-defined]
        s._RTCRtpSender__lsr_time = time.time()  # type: ignore[attr-defined]
        cname = s._RTCRtpSender__cname  # type: ignore[attr-defined]
        if cname is not None:
            packets.append(RtcpSdesPacket(chunks=[RtcpSourceInfo(ssrc=self._ssrc, items=[(1, cname.encode())])]))
        return packets

    def _start(self, payload_type: int, ext_layout: tuple[tuple[int, bytes], int, int]) -> None:
        """The viewer's stream begins: its payload type and header extensions
        (RFC 8285: (MID id, MID), abs-send-time id, audio-level id; 0: not
        negotiated)."""
        self._ext_layout = ext_layout
        # Random starting points, as RFC 3550 asks; the timestamp offset is
        # fixed, so skipped packets leave the clock continuous.
        first, self._ts_offset = random16() % 32768, random32()
        if self._viewer is not None:
            (mid_id, mid), abs_id, level_id = ext_layout
            self._viewer.start(
                first, self._ssrc, payload_type, self._ts_offset, self._audio,
                mid_id, mid, abs_id, level_id, self._history, self._sender,
            )  # fmt: skip
        else:
            self._seqs = SeqMap(first)
        self._payload_type = payload_type

    async def _run_rtp(self, codec: RTCRtpCodecParameters) -> None:
        """Replaces the sender's encode loop: configure, then wait for the end."""
        s = self._sender
        s._RTCRtpSender__rtp_started.set()  # type: ignore[attr-defined]
        ids = s._RTCRtpSender__rtp_header_extensions_map._HeaderExtensionsMap__ids  # type: ignore[attr-defined]
        mid = (s._RTCRtpSender__mid or "").encode()  # type: ignore[attr-defined]
        self._start(
            codec.payloadType, (((ids.mid or 0) if mid else 0, mid), ids.abs_send_time or 0, ids.audio_level or 0)
        )
        if self._waiting_keyframe:
            self._ask_keyframe()
        try:
            await self._closed.wait()
        except asyncio.CancelledError:
            pass
        finally:
            self.close()
            s._RTCRtpSender__rtp_exited.set()  # type: ignore[attr-defined]
