"""Simulcast publishing for the Python client: one video section, several
encodings of the same picture, as Chromium sends with `sendEncodings`.

aiortc cannot: its sender has one encoder and one SSRC, and its SDP knows no
`a=rid`/`a=simulcast`. So a `SimulcastVideo` takes over its sender's RTP
loop (as the hub's TrackSink does): it encodes each frame once per layer
(`SyntheticVideo` at ¼, ½ and full size), packetizes each with aiortc's
packer and writes each layer's packets under its own SSRC with the layer's
rid in the `rtp-stream-id` header extension. It answers keyframe requests
(PLI/FIR) and NACKs per layer by SSRC, and writes `a=rid`/`a=simulcast` into
the offer. No RTX: a lost packet is resent as it was.

A layer may carry VP8 temporal layers too (`LayerSpec.temporal`, as
Chromium's `scalabilityMode` L1T2/L1T3 per encoding): it is then a
`client.temporal.TemporalVideo`, packed with its TID in the descriptor.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from aiortc import RTCRtpSender
from aiortc.codecs import HEADER_EXTENSIONS, get_encoder
from aiortc.rtcrtpparameters import RTCRtpCodecParameters, RTCRtpHeaderExtensionParameters, RTCRtpParameters
from aiortc.rtp import (
    RTCP_PSFB_FIR,
    RTCP_PSFB_PLI,
    RTCP_RTPFB_NACK,
    AnyRtcpPacket,
    HeaderExtensionsMap,
    RtcpPsfbPacket,
    RtcpRtpfbPacket,
    RtpPacket,
)
from aiortc.utils import random16, random32

from client.bot import Pacer, Picture, Publishable, SyntheticVideo, pattern_image
from client.temporal import PATTERNS, TemporalVideo
from hub.media.layers import RID_URI

#: Packets of each layer kept for NACKs (RFC 4588 senders keep about a second).
_HISTORY = 512


@dataclass(frozen=True, slots=True)
class LayerSpec:
    rid: str
    #: The picture's width and height are divided by this.
    scale: int
    bitrate: int
    #: Temporal layers in this encoding: 1 none, else a key of `client.temporal.PATTERNS` (VP8 only).
    temporal: int = 1


#: ¼, ½ and full size, lowest first (the order room.js sends them in). The
#: bitrates suit the client's 640×480 pattern at 30 fps; see README.
LAYERS = (LayerSpec("q", 4, 100_000), LayerSpec("h", 2, 300_000), LayerSpec("f", 1, 900_000))


def _layer(
    codec: str, spec: LayerSpec, width: int, height: int, fps: int, frames: int | None, picture: Picture
) -> SyntheticVideo:
    width, height = width // spec.scale, height // spec.scale
    if spec.temporal == 1:
        return SyntheticVideo(codec, width, height, fps, frames, spec.bitrate, picture)
    if codec != "vp8" or spec.temporal not in PATTERNS:
        raise ValueError(f"layer {spec.rid}: {spec.temporal} temporal layers of {codec}; VP8 has 2 or 3")
    return TemporalVideo(spec.temporal, width, height, fps, spec.bitrate, frames, picture)


class _Stream:
    """One layer's RTP stream: its encoder, SSRC, numbering and history."""

    def __init__(self, spec: LayerSpec, video: SyntheticVideo, ssrc: int) -> None:
        self.spec = spec
        self.video = video
        self.ssrc = ssrc
        self.seq = random16()
        self.ts_origin = random32()
        self.history: dict[int, bytes] = {}


class SimulcastVideo(Publishable):
    """A live-encoded test pattern sent as one simulcast track of several layers.

    `layers[rid]` is each layer's `SyntheticVideo`, whose `sent` holds the
    digest of every frame of that layer sent (for `bot.compare`).
    """

    kind = "video"

    def __init__(
        self,
        codec: str = "vp8",
        width: int = 640,
        height: int = 480,
        fps: int = 30,
        frames: int | None = None,
        specs: tuple[LayerSpec, ...] = LAYERS,
        picture: Picture = pattern_image,
    ) -> None:
        super().__init__()
        self.layers = {spec.rid: _layer(codec, spec, width, height, fps, frames, picture) for spec in specs}
        self.mime_type = self.layers[specs[0].rid].mime_type
        self._specs = specs
        self._fps = fps
        self._streams: dict[int, _Stream] = {}
        self._sender: RTCRtpSender | None = None
        ids = [e.id for e in HEADER_EXTENSIONS["video"]]
        self._rid_ext = max(ids) + 1
        self._extensions = [*HEADER_EXTENSIONS["video"], RTCRtpHeaderExtensionParameters(self._rid_ext, RID_URI)]

    async def recv(self) -> None:  # type: ignore[override]
        raise RuntimeError("a SimulcastVideo writes its own packets; nothing reads it")

    def attach(self, sender: RTCRtpSender) -> None:
        self._sender = sender
        # The top layer keeps the sender's SSRC, so aiortc's sender reports name it.
        ssrcs = [random32() for _ in self._specs[:-1]] + [sender._ssrc]
        self._streams = {
            ssrc: _Stream(spec, self.layers[spec.rid], ssrc) for spec, ssrc in zip(self._specs, ssrcs, strict=True)
        }
        sender._run_rtp = self._run_rtp  # type: ignore[method-assign]
        handle = sender._handle_rtcp_packet

        async def handle_rtcp(packet: AnyRtcpPacket) -> None:
            stream = self._streams.get(getattr(packet, "media_ssrc", -1))
            if stream is None:
                await handle(packet)
            elif isinstance(packet, RtcpPsfbPacket) and packet.fmt in (RTCP_PSFB_PLI, RTCP_PSFB_FIR):
                stream.video.request_keyframe()
            elif isinstance(packet, RtcpRtpfbPacket) and packet.fmt == RTCP_RTPFB_NACK:
                for seq in packet.lost:
                    data = stream.history.get(seq % _HISTORY)
                    if data is not None and int.from_bytes(data[2:4], "big") == seq:
                        await sender.transport._send_rtp(data)
            else:
                await handle(packet)

        sender._handle_rtcp_packet = handle_rtcp  # type: ignore[method-assign]

    def shape_offer(self, sdp: str) -> str:
        """The offer's video section with the layers' rids and without SSRC
        lines (the hub learns each layer's SSRC from its rid, as from Chromium)."""
        lines = sdp.split("\r\n")
        start = next(i for i, line in enumerate(lines) if line.startswith("m=video"))
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("m=")), len(lines))
        section = [line for line in lines[start:end] if line and not line.startswith(("a=ssrc:", "a=ssrc-group:"))]
        last_extmap = max(i for i, line in enumerate(section) if line.startswith("a=extmap:"))
        section.insert(last_extmap + 1, f"a=extmap:{self._rid_ext} {RID_URI}")
        section += [f"a=rid:{spec.rid} send" for spec in self._specs]
        section.append("a=simulcast:send " + ";".join(spec.rid for spec in self._specs))
        rest = lines[end:] if end < len(lines) else [""]
        return "\r\n".join(lines[:start] + section + rest)

    async def _run_rtp(self, codec: RTCRtpCodecParameters) -> None:
        s = self._sender
        assert s is not None
        s._RTCRtpSender__rtp_started.set()  # type: ignore[attr-defined]
        dtls = s.transport
        for ssrc in self._streams:
            dtls._rtp_router.register_sender(s, ssrc)  # their RTCP feedback comes here
        extensions = HeaderExtensionsMap()
        extensions.configure(RTCRtpParameters(headerExtensions=self._extensions))
        mid = s._RTCRtpSender__mid  # type: ignore[attr-defined]
        packers = {
            ssrc: stream.video.packer() if isinstance(stream.video, TemporalVideo) else get_encoder(codec)
            for ssrc, stream in self._streams.items()
        }
        pacer = Pacer(self._fps)
        try:
            while True:
                await pacer.wait()
                for ssrc, stream in self._streams.items():
                    frame = next(stream.video._packets, None)
                    if frame is None:
                        return
                    stream.video.note(frame)
                    payloads, timestamp = packers[ssrc].pack(frame)  # type: ignore[attr-defined]
                    for i, payload in enumerate(payloads):
                        packet = RtpPacket(
                            payload_type=codec.payloadType,
                            marker=int(i == len(payloads) - 1),
                            sequence_number=stream.seq,
                            timestamp=(stream.ts_origin + timestamp) & 0xFFFFFFFF,
                            ssrc=ssrc,
                            payload=payload,
                        )
                        packet.extensions.mid = mid
                        packet.extensions.rtp_stream_id = stream.spec.rid
                        packet.extensions.abs_send_time = int(time.time() * 262144) & 0xFFFFFF
                        data = packet.serialize(extensions)
                        stream.history[stream.seq % _HISTORY] = data
                        stream.seq = (stream.seq + 1) & 0xFFFF
                        await dtls._send_rtp(data)
        except ConnectionError:
            pass  # the session closed
        finally:
            s._RTCRtpSender__rtp_exited.set()  # type: ignore[attr-defined]
