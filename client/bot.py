"""A Python WHIP/WHEP client: publishes a synthetic pattern or a media file,
views a stream, and accounts for every encoded frame.

Tests and benchmarks use it as a library; `python -m hub bot` runs it.
The publisher encodes with PyAV itself and hands aiortc ready packets, so
it knows the exact bytes of every frame it sent; the viewer records the
exact bytes of every frame it received (before any decoder). Comparing the
two proves that nothing between them re-encoded.
"""

from __future__ import annotations

import asyncio
import collections
import fractions
import hashlib
import queue
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import av
import numpy as np
from aiortc import (
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCRtpReceiver,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtp import RtpPacket
from yarl import URL

from hub.media.annexb import join_nal_units, split_nal_units

VIDEO_CLOCK = 90000
#: Host candidates only: aiortc's default would ask a public STUN server.
NO_ICE_SERVERS = RTCConfiguration(iceServers=[])
AUDIO_CLOCK = 48000


class ClientError(Exception):
    """The hub refused a request; the message carries its problem details."""


def frame_key(mime_type: str, data: bytes) -> bytes:
    """A digest of an encoded frame that survives RTP packetization.

    VP8 and Opus frames cross RTP unchanged. H.264 access units are split
    into NAL units and rejoined with 4-byte start codes by the receiver, so
    both sides are compared as their list of NAL units.
    """
    if mime_type.lower() == "video/h264":
        data = join_nal_units(split_nal_units(data))
    return hashlib.sha1(data).digest()


def is_keyframe(mime_type: str, data: bytes) -> bool:
    mime_type = mime_type.lower()
    if mime_type == "video/vp8":
        return bool(data) and not data[0] & 0x01
    if mime_type == "video/h264":
        return any(nal[0] & 0x1F == 5 for nal in split_nal_units(data))
    return True


# -- publishing ---------------------------------------------------------------


@dataclass
class SentFrame:
    index: int
    sent_at: float
    keyframe: bool


class Publishable(MediaStreamTrack):
    """A track `publish` can send: an `EncodedTrack`, or a simulcast one (client.simulcast)."""

    mime_type: str

    def request_keyframe(self) -> None:
        """Called when the far end sends PLI/FIR; file sources ignore it."""

    def attach(self, sender: RTCRtpSender) -> None:
        """Take the sender's keyframe requests (aiortc's would only flag its own, unused, encoder)."""
        sender._send_keyframe = self.request_keyframe  # type: ignore[method-assign]

    def shape_offer(self, sdp: str) -> str:
        """What this track adds to the offer (a simulcast track its layers)."""
        return sdp


class Pacer:
    """Frames at `rate` a second, in real time."""

    def __init__(self, rate: float) -> None:
        self._interval = 1 / rate
        self._start: float | None = None
        self._count = 0

    async def wait(self) -> None:
        """Until the next frame is due (always yielding to the event loop)."""
        now = time.monotonic()
        if self._start is None:
            self._start = now
        delay = self._start + self._count * self._interval - now
        if delay < -self._interval:
            # More than a frame behind (a busy machine): slip the schedule
            # rather than burst frames out back to back.
            self._start -= delay
            delay = 0.0
        self._count += 1
        await asyncio.sleep(max(delay, 0.0))


class EncodedTrack(Publishable):
    """A track that yields encoded `av.Packet`s, paced in real time.

    aiortc's sender packetizes packets as they are (`Encoder.pack`); the
    track keeps the digest and send time of every frame it hands over.
    """

    def __init__(self, kind: str, mime_type: str, packets: Iterator[av.Packet], rate: float) -> None:
        super().__init__()
        self.kind = kind
        self.mime_type = mime_type
        self.sent: dict[bytes, SentFrame] = {}
        self._packets = packets
        self._pacer = Pacer(rate)
        self._count = 0

    async def recv(self) -> av.Packet:  # type: ignore[override]
        if self.readyState != "live":
            raise MediaStreamError
        await self._pacer.wait()
        packet = next(self._packets, None)
        if packet is None:
            self.stop()
            raise MediaStreamError
        self.note(packet)
        return packet

    def note(self, packet: av.Packet) -> None:
        """Keep the digest and send time of a frame handed over."""
        data = bytes(packet)
        self.sent[frame_key(self.mime_type, data)] = SentFrame(self._count, time.monotonic(), bool(packet.is_keyframe))
        self._count += 1


def pattern_image(width: int, height: int, index: int) -> np.ndarray:
    """A moving gradient with the frame number written as 16 white/black blocks."""
    x = np.arange(width, dtype=np.uint16)
    y = np.arange(height, dtype=np.uint16)[:, None]
    img = np.empty((height, width, 3), dtype=np.uint8)
    img[..., 0] = (x + index * 4) % 256
    img[..., 1] = (y + index * 2) % 256
    img[..., 2] = ((x + y) // 2 + index) % 256
    block = max(4, width // 32)
    for bit in range(16):
        img[:block, bit * block : (bit + 1) * block] = 255 if index >> bit & 1 else 0
    return img


#: Draws frame `index` of a synthetic feed: (width, height, index) -> RGB picture.
Picture = Callable[[int, int, int], np.ndarray]


class SyntheticVideo(EncodedTrack):
    """A live-encoded test pattern (or any `picture`); a keyframe request makes the next frame a keyframe."""

    def __init__(
        self,
        codec: str = "vp8",
        width: int = 640,
        height: int = 480,
        fps: int = 30,
        frames: int | None = None,
        bitrate: int = 400_000,
        picture: Picture = pattern_image,
    ) -> None:
        self._want_keyframe = False
        self._picture = picture
        mime = {"vp8": "video/VP8", "h264": "video/H264"}[codec]
        ctx = av.CodecContext.create("libvpx" if codec == "vp8" else "libx264", "w")
        ctx.width, ctx.height, ctx.pix_fmt = width, height, "yuv420p"
        ctx.time_base = fractions.Fraction(1, VIDEO_CLOCK)
        ctx.framerate = fractions.Fraction(fps, 1)
        ctx.bit_rate = bitrate
        ctx.gop_size = 10 * fps
        if codec == "vp8":
            ctx.options = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0", "error-resilient": "1"}
        else:
            ctx.profile = "Baseline"
            ctx.options = {"preset": "ultrafast", "tune": "zerolatency", "bf": "0"}
        self._ctx = ctx
        self._fps = fps
        self._frames = frames
        super().__init__("video", mime, self._encode(), fps)

    def request_keyframe(self) -> None:
        self._want_keyframe = True

    def _encode(self) -> Iterator[av.Packet]:
        index = 0
        while self._frames is None or index < self._frames:
            frame = av.VideoFrame.from_ndarray(self._picture(self._ctx.width, self._ctx.height, index), format="rgb24")
            frame = frame.reformat(format="yuv420p")
            frame.pts = index * VIDEO_CLOCK // self._fps
            frame.time_base = self._ctx.time_base
            if self._want_keyframe:
                self._want_keyframe = False
                frame.pict_type = av.video.frame.PictureType.I
            for packet in self._ctx.encode(frame):
                packet.time_base = self._ctx.time_base
                yield packet
            index += 1


class SyntheticAudio(EncodedTrack):
    """A 440 Hz tone in 20 ms Opus packets."""

    def __init__(self, frames: int | None = None) -> None:
        ctx = av.CodecContext.create("libopus", "w")
        ctx.sample_rate, ctx.layout, ctx.format = AUDIO_CLOCK, "stereo", "s16"
        ctx.time_base = fractions.Fraction(1, AUDIO_CLOCK)
        ctx.bit_rate = 32000
        self._ctx = ctx
        self._frames = frames
        super().__init__("audio", "audio/opus", self._encode(), 50)

    def _encode(self) -> Iterator[av.Packet]:
        samples = AUDIO_CLOCK // 50
        index = 0
        while self._frames is None or index < self._frames:
            t = (np.arange(samples) + index * samples) / AUDIO_CLOCK
            # A faint noise seeded by the frame number makes every packet
            # unique, so that frames can be told apart by digest.
            noise = np.random.default_rng(index).normal(0, 200, samples)
            tone = (np.sin(2 * np.pi * 440 * t) * 8000 + noise).astype(np.int16)
            frame = av.AudioFrame.from_ndarray(np.repeat(tone, 2)[None, :], format="s16", layout="stereo")
            frame.sample_rate, frame.pts, frame.time_base = AUDIO_CLOCK, index * samples, self._ctx.time_base
            for packet in self._ctx.encode(frame):
                packet.time_base = self._ctx.time_base
                yield packet
            index += 1


class FileTracks:
    """Packets of a media file's first video and audio streams, as stored."""

    def __init__(self, path: Path) -> None:
        self._container = av.open(str(path))
        self.tracks: list[EncodedTrack] = []
        streams = (*self._container.streams.video[:1], *self._container.streams.audio[:1])
        # One pass over the file feeds every track: packets read for one
        # stream wait in the other's queue instead of being lost.
        self._demuxer = self._container.demux(*streams)
        self._queues: dict[int, collections.deque[av.Packet]] = {s.index: collections.deque() for s in streams}
        for stream in streams:
            mime = {"vp8": "video/VP8", "h264": "video/H264", "opus": "audio/opus"}.get(stream.codec_context.name)
            if mime is None:
                raise ClientError(f"{path}: {stream.codec_context.name} cannot be forwarded; use VP8, H.264 or Opus")
            rate = float(stream.average_rate or 30) if stream.type == "video" else 50.0
            self.tracks.append(EncodedTrack(stream.type, mime, self._packets(stream.index), rate))

    def _packets(self, index: int) -> Iterator[av.Packet]:
        queue = self._queues[index]
        while True:
            while not queue:
                packet = next(self._demuxer, None)
                if packet is None:
                    return
                if packet.size:
                    self._queues[packet.stream.index].append(packet)
            yield queue.popleft()


# -- viewing ------------------------------------------------------------------


@dataclass
class ReceivedFrame:
    key: bytes
    received_at: float
    keyframe: bool
    size: int


@dataclass
class TrackLog:
    """Every encoded frame one viewer track received, in order."""

    kind: str
    mime_type: str = ""
    frames: list[ReceivedFrame] = field(default_factory=list)
    first_keyframe_at: float | None = None
    decoded: int = 0


class _RecordingQueue(queue.Queue):  # type: ignore[type-arg]
    """Stands in for aiortc's decoder queue, which receives whole encoded
    frames from the jitter buffer: records each, and passes it on to the
    decoder only when pictures are wanted."""

    def __init__(self, log: TrackLog, decode: bool) -> None:
        super().__init__()
        self._log = log
        self._decode = decode

    def put(self, item, block=True, timeout=None):  # type: ignore[no-untyped-def]
        if item is not None:
            codec, frame = item
            log = self._log
            log.mime_type = codec.mimeType
            key = is_keyframe(codec.mimeType, frame.data)
            now = time.monotonic()
            if key and log.first_keyframe_at is None:
                log.first_keyframe_at = now
            log.frames.append(ReceivedFrame(frame_key(codec.mimeType, frame.data), now, key, len(frame.data)))
            if not self._decode:
                return
        super().put(item, block, timeout)


class _WholeFrames(JitterBuffer):
    """aiortc's video jitter buffer, but a frame whose last packet (the marker) never came is
    dropped, as libwebrtc drops it: aiortc hands on whatever it holds once the next timestamp
    starts, so a stream cut mid-frame (an upstream hub killed) showed a frame nobody sent."""

    def __init__(self, capacity: int) -> None:
        super().__init__(capacity, is_video=True)
        self._ended: collections.deque[int] = collections.deque(maxlen=64)  # timestamps with a marker

    def add(self, packet: RtpPacket) -> tuple[bool, JitterFrame | None]:
        if packet.marker:
            self._ended.append(packet.timestamp)
        pli, frame = super().add(packet)
        if frame is not None and frame.timestamp not in self._ended:
            return pli, None
        return pli, frame


def record_receiver(receiver: RTCRtpReceiver, log: TrackLog, decode: bool) -> None:
    receiver._RTCRtpReceiver__decoder_queue = _RecordingQueue(log, decode)  # type: ignore[attr-defined]
    buffer: JitterBuffer = receiver._RTCRtpReceiver__jitter_buffer  # type: ignore[attr-defined]
    if buffer._is_video:
        receiver._RTCRtpReceiver__jitter_buffer = _WholeFrames(buffer.capacity)  # type: ignore[attr-defined]


# -- sessions -----------------------------------------------------------------


@dataclass
class Session:
    """A WHIP or WHEP session: its peer connection and its resource URL."""

    pc: RTCPeerConnection
    location: str
    http: aiohttp.ClientSession
    token: str
    logs: dict[str, TrackLog] = field(default_factory=dict)
    started_at: float = field(default_factory=time.monotonic)

    @property
    def resource_id(self) -> str:
        return self.location.rstrip("/").rsplit("/", 1)[-1]

    async def close(self) -> None:
        try:
            async with self.http.delete(self.location, headers=_auth(self.token)) as response:
                if response.status >= 400 and response.status != 404:
                    raise ClientError(f"DELETE {self.location}: {response.status} {await response.text()}")
        finally:
            await self.pc.close()


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def fetch_ice_servers(http: aiohttp.ClientSession, base_url: str, token: str) -> list[RTCIceServer]:
    """The STUN/TURN servers the hub hands this token's user (GET /api/ice-servers): with TURN
    configured, time-limited credentials minted for the user; none when the hub has none."""
    async with http.get(f"{base_url}/api/ice-servers", headers=_auth(token)) as response:
        if response.status != 200:
            raise ClientError(f"GET {base_url}/api/ice-servers: {response.status} {await response.text()}")
        body = await response.json()
    return [RTCIceServer(s["urls"], s.get("username"), s.get("credential")) for s in body["ice_servers"]]


async def _peer_connection(
    http: aiohttp.ClientSession, base_url: str, token: str, ice_servers: list[RTCIceServer] | None
) -> RTCPeerConnection:
    """A peer connection with `ice_servers`, or with those the hub hands out when None (as the
    browser pages do); an empty list means host candidates only."""
    if ice_servers is None:
        ice_servers = await fetch_ice_servers(http, base_url, token)
    return RTCPeerConnection(RTCConfiguration(iceServers=ice_servers))


async def _exchange(
    http: aiohttp.ClientSession,
    url: str,
    token: str,
    pc: RTCPeerConnection,
    shape: Callable[[str], str] = str,
) -> str:
    await pc.setLocalDescription(await pc.createOffer())  # gathers all candidates: no trickle
    offer = shape(pc.localDescription.sdp)
    headers = _auth(token) | {"Content-Type": "application/sdp"}
    # Redirects are followed by hand: aiohttp drops the Authorization header
    # when a redirect crosses to another hub process (another origin).
    for _ in range(3):
        async with http.post(url, data=offer, headers=headers, allow_redirects=False) as response:
            body = await response.text()
            if response.status in (307, 308):
                url = str(response.url.join(URL(response.headers["Location"])))
                continue
            if response.status != 201:
                await pc.close()
                raise ClientError(f"POST {url}: {response.status} {body}")
            location = str(response.url.join(URL(response.headers["Location"])))
            break
    else:
        await pc.close()
        raise ClientError(f"POST {url}: too many redirects")
    await pc.setRemoteDescription(RTCSessionDescription(sdp=body, type="answer"))
    return location


async def publish(
    http: aiohttp.ClientSession,
    base_url: str,
    token: str,
    room_id: str,
    tracks: list[Publishable],
    kind: str = "camera",
    participant: str | None = None,
    ice_servers: list[RTCIceServer] | None = None,
) -> Session:
    """Publish tracks into a room; `participant` attaches the stream to the
    caller's event-socket participant (else the hub makes one for it).
    `ice_servers` None: the STUN/TURN servers the hub hands out."""
    pc = await _peer_connection(http, base_url, token, ice_servers)
    for track in tracks:
        transceiver = pc.addTransceiver(track, direction="sendonly")
        codecs = [
            c
            for c in RTCRtpReceiver.getCapabilities(track.kind).codecs
            if c.mimeType.lower() in (track.mime_type.lower(), f"{track.kind}/rtx")
        ]
        transceiver.setCodecPreferences(codecs)
        track.attach(transceiver.sender)

    def shape(sdp: str) -> str:
        for track in tracks:
            sdp = track.shape_offer(sdp)
        return sdp

    query = f"kind={kind}" + (f"&participant={participant}" if participant else "")
    location = await _exchange(http, f"{base_url}/whip/{room_id}?{query}", token, pc, shape)
    return Session(pc, location, http, token)


async def view(
    http: aiohttp.ClientSession,
    base_url: str,
    token: str,
    stream_id: str,
    kinds: tuple[str, ...] = ("video", "audio"),
    decode: bool = False,
    ice_servers: list[RTCIceServer] | None = None,
) -> Session:
    """View a stream; `ice_servers` as for publish()."""
    pc = await _peer_connection(http, base_url, token, ice_servers)
    logs = {}
    for kind in kinds:
        transceiver = pc.addTransceiver(kind, direction="recvonly")
        logs[kind] = TrackLog(kind)
        record_receiver(transceiver.receiver, logs[kind], decode)
    started = time.monotonic()
    location = await _exchange(http, f"{base_url}/whep/{stream_id}", token, pc)
    return Session(pc, location, http, token, logs, started)


@dataclass
class Delivery:
    """How a viewer's frames compare with what the publisher sent."""

    sent: int
    received: int
    matched: int
    #: Received frames that were never sent: proof of re-encoding or corruption.
    unknown: int
    in_order: bool
    latencies: list[float]

    @property
    def ratio(self) -> float:
        return self.matched / self.sent if self.sent else 0.0


def compare(track: EncodedTrack, log: TrackLog, since: float = 0.0) -> Delivery:
    """Match received frames to sent ones by digest; frames sent before
    `since` (monotonic) are not expected."""
    expected = {k: f for k, f in track.sent.items() if f.sent_at >= since}
    indices, latencies = [], []
    for frame in log.frames:
        sent = track.sent.get(frame.key)
        if sent is not None:
            indices.append(sent.index)
            latencies.append(frame.received_at - sent.sent_at)
    matched = sum(1 for f in log.frames if f.key in expected)
    in_order = all(a < b for a, b in zip(indices, indices[1:], strict=False))
    return Delivery(len(expected), len(log.frames), matched, len(log.frames) - len(indices), in_order, latencies)
