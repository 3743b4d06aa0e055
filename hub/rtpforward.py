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
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable
from dataclasses import dataclass

from aiortc import RTCRtpReceiver, RTCRtpSender, RTCRtpTransceiver, clock
from aiortc.codecs import is_rtx
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtcrtpreceiver import StreamStatistics
from aiortc.rtp import (
    RTCP_PSFB_APP,
    RTP_HISTORY_SIZE,
    RtcpPsfbPacket,
    RtpPacket,
    pack_remb_fci,
    unwrap_rtx,
)
from aiortc.utils import random16, random32

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
    # RFC 7741 section 4.2: payload descriptor, then the VP8 payload header.
    first = payload[0]
    if not first & 0x10 or first & 0x07:  # S bit set and partition index 0
        return False
    pos = 1
    if first & 0x80:  # X: extension byte follows
        if len(payload) < 2:
            return False
        ext = payload[1]
        pos = 2
        if ext & 0x80:  # I: picture id, one or two bytes
            if len(payload) <= pos:
                return False
            pos += 2 if payload[pos] & 0x80 else 1
        if ext & 0x40:  # L: TL0PICIDX
            pos += 1
        if ext & 0x30:  # T or K: TID/KEYIDX byte
            pos += 1
    return len(payload) > pos and not payload[pos] & 0x01  # P bit 0 = keyframe


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


class TrackSource:
    """One published track: receives its RTP packets and fans them out."""

    def __init__(self, receiver: RTCRtpReceiver, kind: str, keyframe_interval: float) -> None:
        self.kind = kind
        self.codec: RTCRtpCodecParameters | None = None
        self.sinks: set[TrackSink] = set()
        self.packets = 0
        self.octets = 0
        self._receiver = receiver
        self._media_ssrc: int | None = None
        self._keyframe_interval = keyframe_interval
        self._last_keyframe_request = 0.0
        self._pending_keyframe: asyncio.TimerHandle | None = None
        self.keyframe_requests = 0
        receiver._handle_rtp_packet = self._handle_rtp_packet  # type: ignore[method-assign]

    @property
    def mime_type(self) -> str:
        return self.codec.mimeType.lower() if self.codec else ""

    async def _handle_rtp_packet(self, packet: RtpPacket, arrival_time_ms: int) -> None:
        # Mirrors RTCRtpReceiver._handle_rtp_packet up to the point where it
        # would depayload and decode.
        r = self._receiver
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
                await r._send_rtcp(
                    RtcpPsfbPacket(fmt=RTCP_PSFB_APP, ssrc=rtcp_ssrc, media_ssrc=0, fci=pack_remb_fci(*remb))
                )

        if is_rtx(codec):
            original_ssrc = r._RTCRtpReceiver__rtx_ssrc.get(packet.ssrc)  # type: ignore[attr-defined]
            apt = codec.parameters.get("apt")
            if original_ssrc is None or len(packet.payload) < 2 or apt not in codecs:
                return
            packet = unwrap_rtx(packet, payload_type=apt, ssrc=original_ssrc)  # type: ignore[arg-type]
            codec = codecs[apt]  # type: ignore[index]
        elif not packet.payload:
            return  # padding-only probe

        nack = r._RTCRtpReceiver__nack_generator  # type: ignore[attr-defined]
        if nack is not None and nack.add(packet):
            await r._send_rtcp_nack(packet.ssrc, sorted(nack.missing))

        self._media_ssrc = packet.ssrc
        self.codec = codec
        self.packets += 1
        self.octets += len(packet.payload)
        for sink in tuple(self.sinks):
            sink.push(packet)

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
        if self._media_ssrc is None:
            return
        self._last_keyframe_request = time.monotonic()
        self.keyframe_requests += 1
        asyncio.ensure_future(self._receiver._send_rtcp_pli(self._media_ssrc))

    def close(self) -> None:
        if self._pending_keyframe is not None:
            self._pending_keyframe.cancel()
        for sink in tuple(self.sinks):
            sink.close()


@dataclass
class SinkStats:
    packets: int = 0
    dropped: int = 0
    keyframe_waits: int = 0
    first_packet_at: float | None = None


class TrackSink:
    """One viewer's copy of a track: a bounded queue and an RTP writer task."""

    def __init__(self, source: TrackSource, sender: RTCRtpSender, max_queue: int) -> None:
        self.source = source
        self.stats = SinkStats()
        self._sender = sender
        self._queue: collections.deque[RtpPacket] = collections.deque()
        self._max_queue = max_queue
        self._wakeup = asyncio.Event()
        self._closed = False
        # Video starts at a keyframe; audio can start anywhere.
        self._waiting_keyframe = source.kind == "video"
        self.on_close: Callable[[], None] | None = None
        sender._run_rtp = self._run_rtp  # type: ignore[method-assign]
        sender._send_keyframe = source.request_keyframe  # type: ignore[method-assign]
        source.sinks.add(self)
        if self._waiting_keyframe:
            source.request_keyframe()

    def push(self, packet: RtpPacket) -> None:
        if self._waiting_keyframe:
            if not is_keyframe_start(self.source.mime_type, packet.payload):
                self.stats.dropped += 1
                return
            self._waiting_keyframe = False
        if len(self._queue) >= self._max_queue:
            # This viewer fell behind: forget what it has not sent and restart
            # it at the next keyframe. Other viewers are not affected.
            self.stats.dropped += len(self._queue) + 1
            self.stats.keyframe_waits += 1
            self._queue.clear()
            self._waiting_keyframe = self.source.kind == "video"
            self.source.request_keyframe()
            return
        self._queue.append(packet)
        self._wakeup.set()

    def close(self) -> None:
        self._closed = True
        self.source.sinks.discard(self)
        self._wakeup.set()

    async def _run_rtp(self, codec: RTCRtpCodecParameters) -> None:
        s = self._sender
        s._RTCRtpSender__rtp_started.set()  # type: ignore[attr-defined]
        ext_map = s._RTCRtpSender__rtp_header_extensions_map  # type: ignore[attr-defined]
        history: dict[int, RtpPacket] = s._RTCRtpSender__rtp_history  # type: ignore[attr-defined]
        mid = s._RTCRtpSender__mid  # type: ignore[attr-defined]
        send = s.transport._send_rtp
        ssrc = s._ssrc
        payload_type = codec.payloadType
        seq_offset: int | None = None
        ts_offset: int | None = None
        try:
            while not self._closed:
                await self._wakeup.wait()
                self._wakeup.clear()
                while self._queue:
                    packet = self._queue.popleft()
                    if seq_offset is None:
                        # Random starting points, as RFC 3550 asks; the
                        # mapping stays fixed so retransmissions line up.
                        seq_offset = (random16() - packet.sequence_number) & 0x7FFF
                        ts_offset = (random32() - packet.timestamp) & 0xFFFFFFFF
                        self.stats.first_packet_at = time.monotonic()
                    out = RtpPacket(
                        payload_type=payload_type,
                        marker=packet.marker,
                        sequence_number=(packet.sequence_number + seq_offset) & 0xFFFF,
                        timestamp=(packet.timestamp + ts_offset) & 0xFFFFFFFF,  # type: ignore[operator]
                        ssrc=ssrc,
                        payload=packet.payload,
                    )
                    out.extensions.mid = mid
                    out.extensions.abs_send_time = (clock.current_ntp_time() >> 14) & 0x00FFFFFF
                    out.extensions.audio_level = packet.extensions.audio_level
                    history[out.sequence_number % RTP_HISTORY_SIZE] = out
                    await send(out.serialize(ext_map))
                    self.stats.packets += 1
                    s._RTCRtpSender__ntp_timestamp = clock.current_ntp_time()  # type: ignore[attr-defined]
                    s._RTCRtpSender__rtp_timestamp = out.timestamp  # type: ignore[attr-defined]
                    s._RTCRtpSender__octet_count += len(out.payload)  # type: ignore[attr-defined]
                    s._RTCRtpSender__packet_count += 1  # type: ignore[attr-defined]
        except (asyncio.CancelledError, ConnectionError):
            pass
        finally:
            self.close()
            s._RTCRtpSender__rtp_exited.set()  # type: ignore[attr-defined]
            if self.on_close is not None:
                self.on_close()
