"""The media plane: producers (published streams) and consumers (viewers).

Vocabulary after mediasoup: a `Producer` is one WHIP session's peer
connection and its tracks; a `Consumer` is one WHEP session forwarding a
producer's tracks to a viewer; the `Router` owns both on this hub process.
Packets move between them in `rtpforward`, never decoded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtcpeerconnection import is_codec_compatible

from hub.media.forward import PASSTHROUGH_CODECS, TrackSink, TrackSource, offered_codecs, restrict_codecs
from hub.media.ice import announce

log = logging.getLogger(__name__)


class SdpError(ValueError):
    """An offer the hub cannot answer; the message says why."""


@dataclass
class Producer:
    id: str
    #: None for a stream the hub feeds itself (`Router.add_local_producer`).
    pc: RTCPeerConnection | None
    sources: dict[str, TrackSource]
    created: float = field(default_factory=time.time)
    consumers: set[Consumer] = field(default_factory=set)

    def codecs(self) -> dict[str, str]:
        return {kind: s.codec.mimeType for kind, s in self.sources.items() if s.codec}


@dataclass(eq=False)
class Consumer:
    id: str
    producer: Producer
    pc: RTCPeerConnection
    sinks: dict[str, TrackSink]
    user: str
    created: float = field(default_factory=time.time)


class ForwardedTrack(MediaStreamTrack):
    """Stands in for the viewer's track: aiortc's senders need one to exist,
    but a `TrackSink` feeds the sender, so nothing ever reads it."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    async def recv(self) -> None:  # type: ignore[override]
        raise MediaStreamError("forwarded tracks are fed packets by a TrackSink")


def check_offer(sdp: str, max_bytes: int) -> None:
    if len(sdp.encode()) > max_bytes:
        raise SdpError(f"SDP offer larger than {max_bytes} bytes")
    if not sdp.startswith("v=0") or "\nm=" not in sdp:
        raise SdpError("not an SDP offer: expected 'v=0' and at least one m= section")


async def _answer(pc: RTCPeerConnection, offer: str, prepare: Callable[[], None]) -> str:
    """Apply an offer, let `prepare` shape the transceivers, return the answer.

    Any failure closes the peer connection, so a bad offer leaves nothing behind.
    """
    try:
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
        except SdpError:
            raise
        except Exception as exc:  # aiortc reports bad SDP with assorted errors
            raise SdpError(f"malformed SDP offer: {exc}") from exc
        prepare()
        await pc.setLocalDescription(await pc.createAnswer())
        return pc.localDescription.sdp
    except BaseException:
        await pc.close()
        raise


class Router:
    """Owns the producers and consumers hosted by this hub process."""

    def __init__(
        self, announced_ip: str | None, max_backlog: int, keyframe_interval: float, ice_servers: list[str]
    ) -> None:
        self._configuration = RTCConfiguration(iceServers=[RTCIceServer(url) for url in ice_servers])
        self.producers: dict[str, Producer] = {}
        self.consumers: dict[str, Consumer] = {}
        self._announced_ip = announced_ip
        self._max_backlog = max_backlog
        self._keyframe_interval = keyframe_interval
        #: Called when a producer ends for any reason (DELETE, ICE failure, close).
        self.on_producer_closed: Callable[[Producer], Awaitable[None]] | None = None

    async def publish(self, offer: str) -> tuple[Producer, str]:
        pc = RTCPeerConnection(self._configuration)
        sources: dict[str, TrackSource] = {}

        def prepare() -> None:
            kinds = [t.kind for t in pc.getTransceivers()]
            if not kinds or len(kinds) != len(set(kinds)) or not set(kinds) <= {"audio", "video"}:
                raise SdpError("a WHIP offer carries at most one audio and one video section")
            for transceiver in pc.getTransceivers():
                codec = next((c for c in offered_codecs(transceiver) if c.mimeType.lower() in PASSTHROUGH_CODECS), None)
                if codec is None:
                    raise SdpError(f"no {transceiver.kind} codec the hub forwards (VP8, H.264, Opus, G.711)")
                restrict_codecs(transceiver, codec)
                transceiver.direction = "recvonly"
                source = TrackSource(transceiver.receiver, transceiver.kind, self._keyframe_interval)
                source.codec = codec
                sources[transceiver.kind] = source

        answer = await _answer(pc, offer, prepare)
        producer = Producer(id=secrets.token_urlsafe(9), pc=pc, sources=sources)
        self.producers[producer.id] = producer
        self._watch(pc, lambda: self.close_producer(producer.id))
        return producer, announce(answer, self._announced_ip)

    def add_local_producer(self, sources: dict[str, TrackSource]) -> Producer:
        """A producer with no publisher's peer connection: the hub feeds its
        sources itself (`TrackSource.forward`), e.g. with a camera it pulls."""
        producer = Producer(id=secrets.token_urlsafe(9), pc=None, sources=sources)
        self.producers[producer.id] = producer
        return producer

    async def consume(self, producer_id: str, offer: str, user: str) -> tuple[Consumer, str]:
        producer = self.producers[producer_id]
        pc = RTCPeerConnection(self._configuration)
        sinks: dict[str, TrackSink] = {}

        def prepare() -> None:
            for transceiver in pc.getTransceivers():
                source = producer.sources.get(transceiver.kind)
                if source is None or source.codec is None or transceiver.kind in sinks:
                    transceiver.direction = "inactive"
                    continue
                codec = next((c for c in offered_codecs(transceiver) if is_codec_compatible(c, source.codec)), None)
                if codec is None:
                    raise SdpError(f"the viewer does not accept this stream's {source.codec.mimeType}")
                restrict_codecs(transceiver, codec)
                transceiver.sender.replaceTrack(ForwardedTrack(transceiver.kind))
                transceiver.direction = "sendonly"
                sinks[transceiver.kind] = TrackSink(source, transceiver.sender, self._max_backlog)
            if not sinks:
                raise SdpError("the offer has no audio or video section this stream can fill")

        try:
            answer = await _answer(pc, offer, prepare)
        except BaseException:
            for sink in sinks.values():
                sink.close()
            raise
        consumer = Consumer(id=secrets.token_urlsafe(9), producer=producer, pc=pc, sinks=sinks, user=user)
        self.consumers[consumer.id] = consumer
        producer.consumers.add(consumer)
        self._watch(pc, lambda: self.close_consumer(consumer.id))
        return consumer, announce(answer, self._announced_ip)

    def _watch(self, pc: RTCPeerConnection, close: Callable[[], Awaitable[object]]) -> None:
        @pc.on("connectionstatechange")
        async def _on_state() -> None:
            if pc.connectionState in ("failed", "closed"):
                await close()

    async def close_producer(self, producer_id: str) -> Producer | None:
        producer = self.producers.pop(producer_id, None)
        if producer is None:
            return None
        for source in producer.sources.values():
            source.close()
        await asyncio.gather(*(self.close_consumer(c.id) for c in tuple(producer.consumers)))
        if producer.pc is not None:
            await producer.pc.close()
        if self.on_producer_closed is not None:
            await self.on_producer_closed(producer)
        return producer

    async def close_consumer(self, consumer_id: str) -> Consumer | None:
        consumer = self.consumers.pop(consumer_id, None)
        if consumer is None:
            return None
        consumer.producer.consumers.discard(consumer)
        for sink in consumer.sinks.values():
            sink.close()
        await consumer.pc.close()
        return consumer

    async def close(self) -> None:
        for producer_id in tuple(self.producers):
            with contextlib.suppress(Exception):
                await self.close_producer(producer_id)
