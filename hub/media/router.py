"""The media plane's one door: streams published here and their subscriptions.

Outside this package a stream and a subscription are known by their ids and
the typed records below; inside, the vocabulary is mediasoup's: a `Producer`
is one stream's media on this process (a WHIP session's peer connection, or
a source the hub feeds itself) with one `TrackSource` per kind; a `Consumer`
is one subscription (a WHEP session) with one `TrackSink` per kind. Other
subscribers of a track (recorder, snapshots, relays) are `Sink`s attached
through `subscribe`. Packets move in `forward`, never decoded.
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
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from hub.media import door, layers, reader
from hub.media.forward import (
    PASSTHROUGH_CODECS,
    Fanout,
    Sink,
    Track,
    TrackSink,
    TrackSource,
    offered_codecs,
    restrict_codecs,
)
from hub.media.ice import announce
from hub.media.ingest import Feeder
from hub.media.relay import Upstream, open_pull
from hub.media.temporal import TemporalFilter

log = logging.getLogger(__name__)


class SdpError(ValueError):
    """An offer the hub cannot answer; the message says why."""


class StreamEnded(LookupError):
    """The stream's media is not (or no longer) on this process."""


@dataclass(frozen=True, slots=True)
class StreamMedia:
    """What the domain learns of a stream's media when it is published here."""

    id: str
    #: Track kind -> MIME type, e.g. {"video": "video/VP8"}.
    codecs: dict[str, str]
    created: float

    @property
    def tracks(self) -> list[str]:
        return sorted(self.codecs)


@dataclass(frozen=True, slots=True)
class SubscriptionMedia:
    """One subscription (WHEP session) hosted here: its stream and viewer."""

    id: str
    stream_id: str
    user: str


@dataclass
class Producer:
    id: str
    #: None for a stream the hub feeds itself (`Router.add_local_producer`).
    pc: RTCPeerConnection | None
    sources: dict[str, TrackSource]
    created: float = field(default_factory=time.time)
    consumers: set[Consumer] = field(default_factory=set)
    #: Set for a relay: the hub this process pulls the stream from.
    upstream: Upstream | None = None
    #: A relay's end, pending while it has no local viewer.
    linger: asyncio.TimerHandle | None = None
    #: Viewers' offers being answered: a relay does not end under them.
    answering: int = 0
    #: Sinks attached through `subscribe` (a recorder): a relay does not end under them either.
    sinks: set[Sink] = field(default_factory=set)

    def idle(self) -> bool:
        """A relay nobody here needs: it ends after the linger."""
        return not self.answering and not self.consumers and not self.sinks

    def media(self) -> StreamMedia:
        codecs = {kind: s.codec.mimeType for kind, s in self.sources.items() if s.codec}
        return StreamMedia(self.id, codecs, self.created)


@dataclass(eq=False)
class Consumer:
    id: str
    producer: Producer
    pc: RTCPeerConnection
    sinks: dict[str, TrackSink]
    user: str
    created: float = field(default_factory=time.time)
    #: The viewer's choice among a simulcast stream's layers.
    switch: layers.LayerSwitch | None = None
    #: The viewer's temporal layers of a VP8 stream.
    temporal: TemporalFilter | None = None

    def close_fanouts(self) -> None:
        for fanout in (self.temporal, self.switch):
            if fanout is not None:
                fanout.close()

    def layer_state(self) -> layers.LayerState | None:
        """Its layers, or None for a stream with neither simulcast nor (so far) temporal layers."""
        if self.switch is not None:
            return self.switch.state()
        if self.temporal is not None and self.temporal.layer is not None:
            return layers.LayerState(None, None, (), self.temporal.estimate, 0, self.temporal.layer)
        return None


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
        except Exception as exc:  # aiortc reports bad SDP with assorted errors
            raise SdpError(f"malformed SDP offer: {exc}") from exc
        prepare()
        try:
            await pc.setLocalDescription(await pc.createAnswer())
        except Exception as exc:  # an offer aiortc took but cannot answer (e.g. attributes outside any m= section)
            raise SdpError(f"cannot answer this SDP offer: {exc}") from exc
        return pc.localDescription.sdp
    except BaseException:
        # After a half-applied offer aiortc's close can fail too: that must not hide why.
        with contextlib.suppress(Exception):
            await pc.close()
        raise


class Router:
    """Owns the producers and consumers hosted by this hub process."""

    def __init__(
        self,
        announced_ip: str | None,
        max_backlog: int,
        keyframe_interval: float,
        ice_servers: list[str],
        connect_timeout: float,
        relay_linger: float = 5.0,
        session_prefix: str = "",
    ) -> None:
        door.install()  # before any peer connection opens a socket
        self._configuration = RTCConfiguration(iceServers=[RTCIceServer(url) for url in ice_servers])
        self._producers: dict[str, Producer] = {}
        self._consumers: dict[str, Consumer] = {}
        self._announced_ip = announced_ip
        self._max_backlog = max_backlog
        self._keyframe_interval = keyframe_interval
        #: Seconds a session may take to connect (ICE + DTLS) before it is closed.
        self._connect_timeout = connect_timeout
        self._expiring: set[asyncio.Task[object]] = set()
        #: Seconds a relay stays after its last local viewer left.
        self._relay_linger = relay_linger
        #: Starts every subscription id made here: tells any hub process which one holds it.
        self._session_prefix = session_prefix
        #: Stream id -> the pull being set up: concurrent viewers wait on the one.
        self._pulls: dict[str, asyncio.Future[None]] = {}
        #: Called with a stream's id when its media ends for any reason (DELETE, ICE failure, close).
        self.on_stream_ended: Callable[[str], Awaitable[None]] | None = None
        #: Called with a subscription's id when it ends for any reason (DELETE, ICE failure, its stream ending, close).
        self.on_view_ended: Callable[[str], Awaitable[None]] | None = None

    # -- what is hosted here ---------------------------------------------------

    def hosts(self, stream_id: str) -> bool:
        """Whether the stream is published here (a relay's stream is hosted elsewhere)."""
        return self._hosted(stream_id) is not None

    def relays(self, stream_id: str) -> bool:
        """Whether this process pulls the stream from another hub process."""
        producer = self._producers.get(stream_id)
        return producer is not None and producer.upstream is not None

    def upstream(self, stream_id: str) -> Upstream | None:
        """The hub this process pulls a relayed stream from (None: not relayed here)."""
        producer = self._producers.get(stream_id)
        return producer.upstream if producer is not None else None

    def _hosted(self, stream_id: str) -> Producer | None:
        producer = self._producers.get(stream_id)
        return producer if producer is not None and producer.upstream is None else None

    def subscription(self, subscription_id: str) -> SubscriptionMedia | None:
        consumer = self._consumers.get(subscription_id)
        if consumer is None:
            return None
        return SubscriptionMedia(consumer.id, consumer.producer.id, consumer.user)

    def set_tile(self, subscription_id: str, width: int, height: int) -> layers.LayerState | None:
        """The size a viewer renders a subscription's video at (0×0: hidden);
        None when its stream has no layers to choose from."""
        consumer = self._consumers.get(subscription_id)
        if consumer is None:
            raise StreamEnded(f"subscription {subscription_id} has ended")
        if consumer.switch is not None:
            consumer.switch.set_tile(layers.Tile(width, height))
        return consumer.layer_state()

    def layer_states(self) -> dict[str, tuple[str, layers.LayerState]]:
        """Subscription id -> (stream id, its layers), for every subscription here with layers."""
        states = ((c.id, c.producer.id, c.layer_state()) for c in self._consumers.values())
        return {sid: (stream, state) for sid, stream, state in states if state is not None}

    def counts(self) -> dict[str, int]:
        relays = sum(p.upstream is not None for p in self._producers.values())
        return {
            "streams": len(self._producers) - relays,
            "subscriptions": len(self._consumers),
            "relays": relays,
            # The relays' sockets, read beside the event loop (hub.media.reader).
            "reader_sockets": reader.watched(asyncio.get_running_loop()),
        }

    def subscriptions(self) -> list[SubscriptionMedia]:
        """Every subscription (WHEP session) hosted here, connecting or connected."""
        return [SubscriptionMedia(c.id, c.producer.id, c.user) for c in self._consumers.values()]

    # -- the stream interface: local subscribers of a track --------------------
    # The snapshot taker of the hosting process serves the whole cluster, so it
    # asks for hosted tracks only; a recorder takes a relay's tracks too (a room
    # recorded on one process whose publishers are on several).

    def tracks(self, stream_id: str, relayed: bool = False) -> dict[str, Track]:
        """A stream's tracks by kind; empty when it is not hosted here (nor, if
        `relayed`, relayed here)."""
        producer = self._producers.get(stream_id) if relayed else self._hosted(stream_id)
        return dict(producer.sources) if producer is not None else {}

    def subscribe(self, stream_id: str, kind: str, sink: Sink, width: int = 0) -> Track | None:
        """Attach a sink to a track of a stream hosted or relayed here (None:
        no such track); of a simulcast track, the top layer, or with `width`
        the lowest layer that wide. A relay stays while a sink is attached."""
        producer = self._producers.get(stream_id)
        source = producer.sources.get(kind) if producer is not None else None
        if producer is None or source is None:
            return None
        if isinstance(source, layers.SimulcastSource) and width:
            source = source.at_least(width)
        source.sinks.add(sink)
        producer.sinks.add(sink)
        if producer.linger is not None:
            producer.linger.cancel()
            producer.linger = None
        return source

    def unsubscribe(self, stream_id: str, kind: str, sink: Sink) -> None:
        producer = self._producers.get(stream_id)
        source = producer.sources.get(kind) if producer is not None else None
        if producer is None or source is None:
            return
        source.sinks.discard(sink)
        if isinstance(source, layers.SimulcastSource):
            for layer in source.layers:
                layer.sinks.discard(sink)
        if not any(_feeds(s, sink) for s in producer.sources.values()):
            producer.sinks.discard(sink)
        if producer.upstream is not None and producer.idle():
            self._linger(producer)

    # -- publishing and viewing ------------------------------------------------

    async def publish(self, offer: str) -> tuple[StreamMedia, str]:
        pc = RTCPeerConnection(self._configuration)
        sources: dict[str, TrackSource] = {}
        try:
            simulcast = layers.read_offer(offer)
        except layers.SimulcastError as exc:
            await pc.close()
            raise SdpError(str(exc)) from exc

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
                if simulcast is not None and transceiver.kind == "video":
                    layers.accept(transceiver, simulcast)
                    receiver, interval = transceiver.receiver, self._keyframe_interval
                    source: TrackSource = layers.SimulcastSource(receiver, simulcast, interval)
                else:
                    source = TrackSource(transceiver.receiver, transceiver.kind, self._keyframe_interval)
                source.codec = codec
                sources[transceiver.kind] = source

        answer = await _answer(pc, offer, prepare)
        if simulcast is not None:
            answer = layers.answer(answer, simulcast)
        producer = Producer(id=secrets.token_urlsafe(9), pc=pc, sources=sources)
        self._producers[producer.id] = producer
        self._watch(pc, lambda: self.end_stream(producer.id))
        return producer.media(), announce(answer, self._announced_ip)

    def publish_local(
        self, codec: RTCRtpCodecParameters, on_keyframe_request: Callable[[], None]
    ) -> tuple[StreamMedia, Feeder]:
        """A video stream with no publisher's peer connection: the hub feeds
        it itself through the returned `Feeder`, e.g. with a camera it pulls;
        keyframe requests go to `on_keyframe_request`."""
        source = TrackSource(None, "video", self._keyframe_interval, on_keyframe_request)
        source.codec = codec
        producer = Producer(id=secrets.token_urlsafe(9), pc=None, sources={"video": source})
        self._producers[producer.id] = producer
        return producer.media(), Feeder(source)

    async def pull(self, stream_id: str, kinds: list[str], connect: Callable[[], Upstream]) -> None:
        """Make sure this process has the stream, hosted or relayed: pull it
        from the hub `connect` reaches unless it does. One pull per stream: a second viewer
        waits for the first one's pull. Raises RelayError (hub.media.relay)."""
        if stream_id in self._producers:
            return
        pending = self._pulls.get(stream_id)
        if pending is None:
            pending = self._pulls[stream_id] = asyncio.ensure_future(self._open_relay(stream_id, kinds, connect()))

            def done(future: asyncio.Future[None]) -> None:
                self._pulls.pop(stream_id, None)
                if not future.cancelled():
                    future.exception()  # retrieved even when every waiter went away

            pending.add_done_callback(done)
        # A viewer that gives up does not cancel the pull the others wait for.
        await asyncio.shield(pending)

    async def _open_relay(self, stream_id: str, kinds: list[str], upstream: Upstream) -> None:
        pc, sources = await open_pull(
            self._configuration, kinds, upstream, self._keyframe_interval, self._connect_timeout
        )
        producer = Producer(id=stream_id, pc=pc, sources=sources, upstream=upstream)
        self._producers[stream_id] = producer
        self._watch(pc, lambda: self._pull_lost(producer, pc))
        self._linger(producer)  # until its first viewer is answered
        log.info("relaying stream %s (%s)", stream_id, ", ".join(sorted(sources)))

    async def _pull_lost(self, producer: Producer, pc: RTCPeerConnection) -> None:
        """A pull's connection failed or closed: its relay ends, unless it pulls anew already."""
        if producer.pc is pc:
            await self.end_stream(producer.id)

    async def repull(self, stream_id: str, connect: Callable[[], Upstream]) -> bool:
        """Pull a relayed stream anew, from the hub `connect` reaches (its
        upstream hub died): the relay's sources stay, and with them its
        viewers and sinks, fed by the new pull from its first packet - a new
        run of packets, as from a restarted source (new SSRC: each viewer's
        numbers go on, hub.media.forward.SeqMap). False if the stream is not
        relayed here; a new pull that fails ends the relay, as the dead one would."""
        producer = self._producers.get(stream_id)
        if producer is None or producer.upstream is None:
            return False
        old_pc, old_upstream = producer.pc, producer.upstream
        upstream = connect()
        try:
            pc, _ = await open_pull(
                self._configuration,
                list(producer.sources),
                upstream,
                self._keyframe_interval,
                self._connect_timeout,
                producer.sources,
            )
        except Exception:
            await self.end_stream(stream_id)
            raise
        if self._producers.get(stream_id) is not producer:  # it ended meanwhile
            await pc.close()
            await upstream.close()
            return False
        producer.pc, producer.upstream = pc, upstream
        self._watch(pc, lambda: self._pull_lost(producer, pc))
        # Not awaited: the old upstream is most likely gone, its DELETE may wait out a timeout.
        task = asyncio.ensure_future(self._close_pull(old_pc, old_upstream))
        self._expiring.add(task)
        task.add_done_callback(self._expiring.discard)
        log.info("relaying stream %s through a new pull", stream_id)
        return True

    @staticmethod
    async def _close_pull(pc: RTCPeerConnection | None, upstream: Upstream) -> None:
        if pc is not None:
            await pc.close()
        await upstream.close()

    def _linger(self, producer: Producer) -> None:
        """End a relay with no local viewer after the linger, unless one comes."""
        if producer.linger is None:
            producer.linger = asyncio.get_running_loop().call_later(self._relay_linger, self._end_idle, producer)

    def _end_idle(self, producer: Producer) -> None:
        producer.linger = None
        # An offer being answered re-arms the linger when it is done, if it adds no viewer.
        if producer.idle() and self._producers.get(producer.id) is producer:
            task = asyncio.ensure_future(self.end_stream(producer.id))
            self._expiring.add(task)
            task.add_done_callback(self._expiring.discard)

    async def view(self, stream_id: str, offer: str, user: str) -> tuple[SubscriptionMedia, str]:
        producer = self._producers.get(stream_id)
        if producer is None:
            raise StreamEnded(f"stream {stream_id} has ended")
        pc = RTCPeerConnection(self._configuration)
        sinks: dict[str, TrackSink] = {}
        switches: list[layers.LayerSwitch] = []
        filters: list[TemporalFilter] = []
        # An offer with several video sections (a relay's pull, hub.media.relay)
        # gets a simulcast stream's layers, one a section, each named in the answer.
        named: dict[str, str] = {}

        def prepare() -> None:
            video = producer.sources.get("video")
            sections = sum(t.kind == "video" for t in pc.getTransceivers())
            pulled = video.offered if isinstance(video, layers.SimulcastSource) and sections > 1 else []
            for transceiver in pc.getTransceivers():
                source = producer.sources.get(transceiver.kind)
                key = transceiver.kind
                if pulled and key == "video":
                    # One layer a section; sections beyond the layers get none.
                    key = f"video/{pulled[len(named)].rid}" if len(named) < len(pulled) else "video/"
                if source is None or source.codec is None or key in sinks or key == "video/":
                    transceiver.direction = "inactive"
                    continue
                codec = next((c for c in offered_codecs(transceiver) if is_codec_compatible(c, source.codec)), None)
                if codec is None:
                    raise SdpError(f"the viewer does not accept this stream's {source.codec.mimeType}")
                restrict_codecs(transceiver, codec)
                transceiver.sender.replaceTrack(ForwardedTrack(transceiver.kind))
                transceiver.direction = "sendonly"
                if pulled and transceiver.kind == "video":
                    # A relay forwards every frame of every layer: its own viewers choose.
                    layer = pulled[len(named)]
                    named[transceiver.mid or ""] = layer.rid
                    sinks[key] = TrackSink(layer, transceiver.sender, self._max_backlog)
                    continue
                audio = "audio" in producer.sources and any(t.kind == "audio" for t in pc.getTransceivers())
                feed: Fanout = source
                if isinstance(source, layers.SimulcastSource):
                    switch = layers.LayerSwitch(source, audio)
                    switches.append(switch)
                    switch.watch(transceiver.sender)
                    feed = switch
                if source.mime_type == "video/vp8":
                    temporal = TemporalFilter(feed)
                    filters.append(temporal)
                    if switches:
                        switches[0].temporal = temporal
                    else:
                        temporal.follow(transceiver.sender, layers.AUDIO_RESERVE if audio else 0)
                    feed = temporal
                sinks[transceiver.kind] = TrackSink(feed, transceiver.sender, self._max_backlog)
                if isinstance(source, layers.SimulcastSource):
                    switches[0].viewer = sinks[transceiver.kind]  # it sends the switch's probes
            if not sinks:
                raise SdpError("the offer has no audio or video section this stream can fill")

        producer.answering += 1
        try:
            answer = layers.name_layers(await _answer(pc, offer, prepare), named)
        except BaseException:
            for sink in sinks.values():
                sink.close()
            for fanout in (*filters, *switches):
                fanout.close()
            raise
        finally:
            producer.answering -= 1
            if producer.upstream is not None and producer.idle() and self._producers.get(stream_id) is producer:
                self._linger(producer)  # cancelled below if this viewer is added
        consumer = Consumer(
            id=self._session_prefix + secrets.token_urlsafe(9),
            producer=producer,
            pc=pc,
            sinks=sinks,
            user=user,
            switch=switches[0] if switches else None,
            temporal=filters[0] if filters else None,
        )
        if self._producers.get(stream_id) is not producer:  # it ended while the offer was answered
            consumer.close_fanouts()
            await pc.close()
            raise StreamEnded(f"stream {stream_id} has ended")
        self._consumers[consumer.id] = consumer
        producer.consumers.add(consumer)
        if producer.linger is not None:
            producer.linger.cancel()
            producer.linger = None
        self._watch(pc, lambda: self.end_view(consumer.id))
        return SubscriptionMedia(consumer.id, producer.id, user), announce(answer, self._announced_ip)

    def _watch(self, pc: RTCPeerConnection, close: Callable[[], Awaitable[object]]) -> None:
        # An offer that never connects would otherwise hold its session until
        # ICE gives up (about a minute): a cheap way to pile up sessions.
        def expire() -> None:
            if pc.connectionState != "connected":
                log.info("closing a session that did not connect within %.1f s", self._connect_timeout)
                task = asyncio.ensure_future(close())
                self._expiring.add(task)
                task.add_done_callback(self._expiring.discard)

        timer = asyncio.get_running_loop().call_later(self._connect_timeout, expire)

        @pc.on("connectionstatechange")
        async def _on_state() -> None:
            if pc.connectionState == "connected":
                timer.cancel()
            elif pc.connectionState in ("failed", "closed"):
                timer.cancel()
                await close()

    async def end_stream(self, stream_id: str) -> bool:
        """End a stream's media and its subscriptions; False if it was not here."""
        producer = self._producers.pop(stream_id, None)
        if producer is None:
            return False
        if producer.linger is not None:
            producer.linger.cancel()
        for source in producer.sources.values():
            source.close()
        await asyncio.gather(*(self.end_view(c.id) for c in tuple(producer.consumers)))
        if producer.pc is not None:
            await producer.pc.close()
        if producer.upstream is not None:
            log.info("relay of stream %s ended", stream_id)
            await producer.upstream.close()
        if self.on_stream_ended is not None:
            await self.on_stream_ended(producer.id)
        return True

    async def end_view(self, subscription_id: str) -> bool:
        consumer = self._consumers.pop(subscription_id, None)
        if consumer is None:
            return False
        producer = consumer.producer
        producer.consumers.discard(consumer)
        for sink in consumer.sinks.values():
            sink.close()
        consumer.close_fanouts()
        if producer.upstream is not None and producer.idle() and self._producers.get(producer.id) is producer:
            self._linger(producer)
        await consumer.pc.close()
        if self.on_view_ended is not None:
            await self.on_view_ended(consumer.id)
        return True

    async def close(self) -> None:
        for stream_id in tuple(self._producers):
            with contextlib.suppress(Exception):
                await self.end_stream(stream_id)


def _feeds(source: TrackSource, sink: Sink) -> bool:
    """Whether a source, or one of its simulcast layers, feeds the sink."""
    layered = isinstance(source, layers.SimulcastSource)
    return sink in source.sinks or (layered and any(sink in layer.sinks for layer in source.layers))
