"""Pulling a camera (RTSP, HTTP or a file) with PyAV and feeding its video
into a `TrackSource` the hub forwards like any published track.

H.264 and VP8 cross the hub as they came from the camera: the packets are
demuxed, never decoded. H.264 is turned into Annex B access units with the
parameter sets (SPS/PPS) in front of every keyframe, so a viewer can start at
any keyframe, then cut into RTP payloads by aiortc's own packetizer. Other
codecs (MJPEG, HEVC, ...) are decoded and encoded once to H.264.

Each camera is pulled in its own thread (PyAV blocks); packets reach the
event loop as whole frames through `call_soon_threadsafe`. A file plays in
real time by its timestamps and loops; a network source is forwarded as it
arrives (its own clock paces it) unless it runs ahead of its timestamps by
more than `NETWORK_LEAD`, as a file served over HTTP would. A read that
stalls for `read_timeout` seconds, an error or the end of a network stream
ends the connection; the puller then retries with exponential backoff.

A camera's URL is the registrant's, so what FFmpeg does with it is narrowed:
a host check before every connection (HUB_CAMERA_NETWORKS, given by the
caller), no HTTP redirects, video containers only, and an error that says
no more than UNREACHABLE, REFUSED or NOT_A_VIDEO (the log has FFmpeg's own
words for the administrator).
"""

from __future__ import annotations

import asyncio
import fractions
import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit, urlunsplit

import av
from aiortc.codecs import get_capabilities
from aiortc.codecs.h264 import H264Encoder
from aiortc.codecs.vpx import Vp8Encoder
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RtpPacket
from aiortc.utils import random16, random32
from av.container import InputContainer

from hub.media.annexb import split_nal_units
from hub.media.forward import TrackSource

log = logging.getLogger(__name__)

VIDEO_CLOCK = 90000
#: Seconds a network source may run ahead of its own timestamps before it is paced.
NETWORK_LEAD = 2.0
#: Seconds a source may lag behind its timestamps (a stall) before the pacing clock restarts.
MAX_LAG = 2.0
#: Frame interval assumed when a source tells none.
DEFAULT_FRAME = 1 / 25
#: FFmpeg protocols each URL scheme may use: an HTTP camera must not be able
#: to make FFmpeg open local files (e.g. through a playlist), nor a file URL the network.
PROTOCOLS = {
    "rtsp": "rtsp,rtp,srtp,udp,tcp",
    "rtsps": "rtsps,rtsp,rtp,srtp,udp,tcp,tls",
    "http": "http,tcp",
    "https": "https,http,tcp,tls",
    "file": "file",
}
#: Containers a camera may send: video formats only, so that no URL can make
#: FFmpeg render another kind of file (its "tty" demuxer draws text as video).
#: Not hls, nor sdp: a playlist or a session description names further hosts
#: that no check of the camera's own URL covers.
FORMATS = "rtsp,rtp,mov,mp4,m4a,3gp,3g2,mj2,matroska,webm,mpegts,h264,hevc,avi,flv,ivf,mjpeg,mpjpeg"

#: The only errors a camera's status shows. Registering URLs must not map the
#: hub's network: a closed port, a silent one and one speaking another
#: protocol all read UNREACHABLE.
UNREACHABLE = "unreachable"  # no media source answered (or the one that did stopped)
REFUSED = "refused"  # the hub would not connect: the host is not in HUB_CAMERA_NETWORKS (any more)
NOT_A_VIDEO = "not a video"  # a source answered but holds no video the hub can forward

_H264_IDR, _H264_SPS, _H264_PPS = 5, 7, 8


def _negotiable(mime_type: str, **parameters: str) -> RTCRtpCodecParameters:
    for capability in get_capabilities("video").codecs:
        if capability.mimeType == mime_type and all(capability.parameters.get(k) == v for k, v in parameters.items()):
            return RTCRtpCodecParameters(
                mimeType=capability.mimeType,
                clockRate=capability.clockRate,
                payloadType=96,  # never on the wire: each viewer's sink writes its own
                parameters=dict(capability.parameters),
            )
    raise LookupError(mime_type)


#: What a camera stream is announced as. H.264 is announced as constrained
#: baseline (what every WebRTC peer accepts); the SDP profile only gates
#: negotiation, decoders take whatever profile the camera sends.
H264 = _negotiable("video/H264", **{"packetization-mode": "1", "profile-level-id": "42e01f"})
VP8 = _negotiable("video/VP8")


def redact(url: str) -> str:
    """The URL without its password, for anyone who may only read it."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


class IngestError(Exception):
    """The camera cannot be read: `status` is what its status may say (one
    of UNREACHABLE, REFUSED, NOT_A_VIDEO), `detail` what the log says."""

    def __init__(self, status: str, detail: str) -> None:
        super().__init__(status)
        self.status = status
        self.detail = detail


def parameter_sets(extradata: bytes | None) -> tuple[list[bytes], int | None]:
    """SPS/PPS NAL units from a stream's extradata, and the NAL length size
    when packets are length-prefixed (MP4's avcC) rather than Annex B."""
    if not extradata:
        return [], None
    if extradata[0] != 1:
        return [n for n in split_nal_units(extradata) if n[0] & 0x1F in (_H264_SPS, _H264_PPS)], None
    # ISO/IEC 14496-15 AVCDecoderConfigurationRecord
    length_size = (extradata[4] & 0x03) + 1
    nals, pos = [], 5
    for count_mask in (0x1F, 0xFF):  # SPS count (5 bits), then PPS count
        count = extradata[pos] & count_mask
        pos += 1
        for _ in range(count):
            size = int.from_bytes(extradata[pos : pos + 2], "big")
            nals.append(extradata[pos + 2 : pos + 2 + size])
            pos += 2 + size
    return nals, length_size


class H264AccessUnits:
    """Turns demuxed H.264 packets into NAL unit lists with the parameter
    sets in front of every IDR picture (before its first slice, where
    FFmpeg's h264_mp4toannexb puts them); in-band ones replace the stored."""

    def __init__(self, extradata: bytes | None) -> None:
        self._parameter_sets, self._length_size = parameter_sets(extradata)

    def __call__(self, data: bytes) -> list[bytes]:
        nals = self._length_prefixed(data) if self._length_size else list(split_nal_units(data))
        types = [n[0] & 0x1F for n in nals]
        if _H264_SPS in types:
            self._parameter_sets = [n for n in nals if n[0] & 0x1F in (_H264_SPS, _H264_PPS)]
        elif _H264_IDR in types:
            first = types.index(_H264_IDR)
            nals[first:first] = self._parameter_sets
        return nals

    def _length_prefixed(self, data: bytes) -> list[bytes]:
        size_bytes = self._length_size or 4
        nals, pos = [], 0
        while pos + size_bytes <= len(data):
            size = int.from_bytes(data[pos : pos + size_bytes], "big")
            pos += size_bytes
            nals.append(data[pos : pos + size])
            pos += size
        return [n for n in nals if n]


class Link(Protocol):
    """What a puller reports to; called on the event loop."""

    async def online(self, puller: CameraPuller, codec: RTCRtpCodecParameters) -> Feeder: ...

    async def offline(self, puller: CameraPuller, error: str) -> None: ...


class Feeder:
    """The loop side of a pulled camera: wraps each frame's payloads in RTP
    packets (one sequence, one SSRC, marker on a frame's last packet) and
    forwards them."""

    def __init__(self, source: TrackSource) -> None:
        self.source = source
        self.frames = 0
        self._seq = random16()
        self._ssrc = random32()
        self._payload_type = source.codec.payloadType if source.codec else 96

    def send(self, payloads: list[bytes], timestamp: int) -> None:
        last = len(payloads) - 1
        for i, payload in enumerate(payloads):
            self.source.forward(
                RtpPacket(
                    payload_type=self._payload_type,
                    marker=int(i == last),
                    sequence_number=self._seq,
                    timestamp=timestamp,
                    ssrc=self._ssrc,
                    payload=payload,
                )
            )
            self._seq = (self._seq + 1) & 0xFFFF
        self.frames += 1


@dataclass
class PullOptions:
    read_timeout: float = 5.0
    open_timeout: float = 10.0
    backoff_min: float = 1.0
    backoff_max: float = 30.0


class CameraPuller:
    """Pulls one camera in a thread of its own until `stop`, reconnecting
    with exponential backoff (`backoff_min` doubling up to `backoff_max`;
    back to the minimum after a connection that delivered frames). Before
    each connection to a network camera, `check_host` (ValueError: refused)
    is asked about the URL's host."""

    def __init__(
        self,
        camera_id: str,
        url: str,
        link: Link,
        options: PullOptions,
        check_host: Callable[[str], None] | None = None,
    ) -> None:
        self.camera_id = camera_id
        self.url = url
        self.options = options
        self._check_host = check_host
        self.scheme = url.split(":", 1)[0].lower()
        self.transcoding = False
        self._link = link
        self._stop = threading.Event()
        self._want_keyframe = False
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name=f"camera-{camera_id}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    async def join(self, timeout: float) -> None:
        await asyncio.to_thread(self._thread.join, timeout)

    def request_keyframe(self) -> None:
        """A viewer or recorder asked for a keyframe: only an encoder can make
        one, so only a transcoded camera honours it; passthrough viewers wait
        for the camera's next one."""
        self._want_keyframe = True

    # -- the puller's thread ----------------------------------------------------

    def _call(self, coro: object) -> object:
        future: Future[object] = asyncio.run_coroutine_threadsafe(coro, self._loop)  # type: ignore[arg-type]
        return future.result(timeout=30)

    def _run(self) -> None:
        delay = self.options.backoff_min
        while not self._stop.is_set():
            feeder: Feeder | None = None
            error, detail = UNREACHABLE, "the stream ended"
            try:
                feeder = self._pull()
            except IngestError as exc:
                error, detail = exc.status, exc.detail
            except Exception as exc:  # any other failure of the source: report it, retry later
                detail = str(exc) or type(exc).__name__
            if self._stop.is_set():
                return
            if feeder is not None and feeder.frames:
                delay = self.options.backoff_min
            # FFmpeg's messages quote the URL: its password must not reach the log either.
            detail = detail.replace(self.url, redact(self.url))
            log.info("camera %s: %s (%s); retrying in %.1f s", self.camera_id, error, detail, delay)
            try:
                self._call(self._link.offline(self, error))
            except Exception:  # the loop is shutting down
                return
            self._stop.wait(delay)
            delay = min(delay * 2, self.options.backoff_max)

    def _pull(self) -> Feeder | None:
        local = self.scheme == "file"
        if not local and self._check_host is not None:
            try:
                self._check_host(urlsplit(self.url).hostname or "")
            except ValueError as exc:
                raise IngestError(REFUSED, str(exc)) from exc
        # RTSP: FFmpeg's default, UDP first, then TCP interleaved if no UDP
        # packet arrives (rtsp_flags=prefer_tcp is refused by some servers).
        options = {"protocol_whitelist": PROTOCOLS[self.scheme], "format_whitelist": FORMATS}
        if self.scheme in ("http", "https"):
            options["max_redirects"] = "0"  # a redirect may lead to any host, past the check above
        url = self.url.removeprefix("file://") if local else self.url
        # A file that is there but no video is NOT_A_VIDEO; over the network
        # that answer would tell a listening port from a closed one.
        unreadable = NOT_A_VIDEO if local else UNREACHABLE
        try:
            container = av.open(url, options=options, timeout=(self.options.open_timeout, self.options.read_timeout))
        except (av.FFmpegError, OSError) as exc:
            missing = isinstance(exc, FileNotFoundError)
            raise IngestError(UNREACHABLE if missing else unreadable, f"cannot open: {exc}") from exc
        feeder: Feeder | None = None
        try:
            if not container.streams.video:
                raise IngestError(NOT_A_VIDEO, "the source has no video stream")
            stream = container.streams.video[0]
            for payloads, seconds in self._frames(container, stream):
                if self._stop.is_set():
                    break
                if feeder is None:
                    codec = VP8 if stream.codec_context.name == "vp8" and not self.transcoding else H264
                    feeder = self._call(self._link.online(self, codec))  # type: ignore[assignment]
                assert feeder is not None
                self._loop.call_soon_threadsafe(feeder.send, payloads, int(seconds * VIDEO_CLOCK) & 0xFFFFFFFF)
        except av.FFmpegError as exc:
            raise IngestError(unreadable, f"read failed: {exc}") from exc
        finally:
            container.close()
        return feeder

    def _frames(self, container: InputContainer, stream: av.VideoStream) -> Iterator[tuple[list[bytes], float]]:
        """(RTP payloads, media seconds) of each frame, paced."""
        name = stream.codec_context.name
        self.transcoding = name not in ("h264", "vp8")
        packetize = self._packetizer(stream)
        clock = _Pacer(lead=0.0 if self.scheme == "file" else NETWORK_LEAD)
        for packet, seconds in self._packets(container, stream):
            for payloads, at in packetize(packet, seconds):
                if payloads:
                    if clock.wait(at, self._stop):
                        return
                    yield payloads, at

    def _packetizer(self, stream: av.VideoStream) -> Callable[[av.Packet, float], list[tuple[list[bytes], float]]]:
        name = stream.codec_context.name
        if name == "h264":
            access_units = H264AccessUnits(stream.codec_context.extradata)
            return lambda packet, at: [(H264Encoder._packetize(access_units(bytes(packet))), at)]
        if name == "vp8":
            picture_id = [0]

            def vp8(packet: av.Packet, at: float) -> list[tuple[list[bytes], float]]:
                payloads = Vp8Encoder._packetize(bytes(packet), picture_id[0])
                picture_id[0] = (picture_id[0] + 1) % (1 << 15)
                return [(payloads, at)]

            return vp8
        log.info("camera %s sends %s: decoding and encoding it once to H.264", self.camera_id, name)
        decoder = av.CodecContext.create(name, "r")
        if stream.codec_context.extradata:
            decoder.extradata = stream.codec_context.extradata
        rate = fractions.Fraction(stream.average_rate or 25)
        encoder: av.VideoCodecContext | None = None
        count = 0

        def transcode(packet: av.Packet, at: float) -> list[tuple[list[bytes], float]]:
            nonlocal encoder, count
            out = []
            for frame in decoder.decode(packet):
                if encoder is None or (encoder.width, encoder.height) != (frame.width, frame.height):
                    encoder = _h264_encoder(frame.width, frame.height, rate)
                keyframe, self._want_keyframe = self._want_keyframe, False
                picture = frame.reformat(format="yuv420p")
                picture.pts, picture.time_base = count, encoder.time_base  # x264 wants steady timestamps
                count += 1
                # A viewer or the recorder asked for a keyframe: this encoder can make one.
                picture.pict_type = av.video.frame.PictureType.I if keyframe else av.video.frame.PictureType.NONE
                for encoded in encoder.encode(picture):
                    out.append((H264Encoder._packetize(split_nal_units(bytes(encoded))), at))
            return out

        return transcode

    def _packets(self, container: InputContainer, stream: av.VideoStream) -> Iterator[tuple[av.Packet, float]]:
        """Demuxed packets with their time in seconds, growing across a
        file's loops; a network stream's end is an error."""
        time_base = float(stream.time_base or 0) or 1 / VIDEO_CLOCK
        frame = float(1 / stream.average_rate) if stream.average_rate else DEFAULT_FRAME
        offset = 0.0
        while True:
            first: int | None = None
            last = -frame
            for packet in container.demux(stream):
                if not packet.size:
                    continue  # the demuxer's end-of-stream marker
                stamp = packet.pts if packet.pts is not None else packet.dts
                if stamp is None:
                    seconds = last + frame
                else:
                    first = stamp if first is None else first
                    seconds = (stamp - first) * time_base
                last = max(last, seconds)
                yield packet, offset + seconds
            if self.scheme != "file":
                raise IngestError(UNREACHABLE, "the stream ended")
            if first is None:
                raise IngestError(NOT_A_VIDEO, "the file has no video frames")
            offset += last + frame
            container.seek(0)


def _h264_encoder(width: int, height: int, rate: fractions.Fraction) -> av.VideoCodecContext:
    """libx264 for a camera whose codec cannot be forwarded: constrained
    baseline (what it is announced as), no B-frames, a keyframe every 2 s,
    in-band SPS/PPS before each, and a fast preset (CPU per camera counts)."""
    encoder = av.CodecContext.create("libx264", "w")
    encoder.width, encoder.height, encoder.pix_fmt = width, height, "yuv420p"
    encoder.framerate = rate
    encoder.time_base = 1 / rate
    encoder.bit_rate = 1_500_000
    encoder.gop_size = int(2 * rate)
    encoder.profile = "Constrained Baseline"
    encoder.options = {"preset": "veryfast", "tune": "zerolatency"}
    return encoder  # type: ignore[return-value]


class _Pacer:
    """Holds frames back until their time: a frame at media time t goes out
    at start + t - lead. A source that stalls restarts the clock."""

    def __init__(self, lead: float) -> None:
        self._lead = lead
        self._base: tuple[float, float] | None = None

    def wait(self, at: float, stop: threading.Event) -> bool:
        """Wait until the frame at media time `at` is due; True if stopped."""
        now = time.monotonic()
        if self._base is None or now - (self._base[0] + at - self._base[1]) > MAX_LAG:
            self._base = (now, at)
        ahead = self._base[0] + at - self._base[1] - now - self._lead
        return ahead > 0 and stop.wait(ahead)
