"""Simulcast: a publisher's layers, and the one a viewer gets.

A simulcast publisher (Chromium with several `sendEncodings`, or the
project's Python client) sends one video section with several RTP streams,
each named by a rid (RFC 8851) in the `rtp-stream-id` header extension and
listed in `a=simulcast:send` (RFC 8853). aiortc knows none of this, so:

* `read_offer` finds the rids and the extension ids in a WHIP offer,
  `accept` adds the extensions to the transceiver being answered (so that
  aiortc's receiver parses them) and `answer` writes `a=rid:... recv` and
  `a=simulcast:recv` into the answer;
* a `SimulcastSource` takes the receiver's packets, tells the streams apart
  by SSRC (learned from the rid each stream carries; RTX by its repaired
  rid) and feeds one `TrackSource` per layer, each with its own keyframe
  requests (PLI with that layer's SSRC) and its own NACKs. Its own sinks
  (recorder) get the top layer; a relay pulls every layer as a track of its
  own (`name_layers`) into a `PulledSimulcast`;
* a `LayerSwitch` stands between the layers and one viewer's `TrackSink`:
  it forwards one layer at a time, chosen by the tile size the viewer
  states and the capacity its feedback (REMB, loss in receiver reports)
  shows, switches only at a keyframe of the new layer (which it asks for),
  and rewrites timestamps so that the viewer sees one continuous stream
  (the sink renumbers the sequence, as for a restarted source).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aiortc import RTCRtpReceiver, RTCRtpSender, RTCRtpTransceiver
from aiortc.rtcrtpparameters import RTCRtpCodecParameters, RTCRtpHeaderExtensionParameters
from aiortc.rtcrtpreceiver import NackGenerator
from aiortc.rtp import (
    RTCP_PSFB_APP,
    RTCP_RTPFB_NACK,
    AnyRtcpPacket,
    RtcpPsfbPacket,
    RtcpRrPacket,
    RtcpRtpfbPacket,
    RtpPacket,
    unpack_remb_fci,
)

from hub.media import door
from hub.media.forward import Outgoing, Sink, TrackSink, TrackSource, is_keyframe_start, vp8_payload_start
from hub.media.upkeep import ticker

if TYPE_CHECKING:
    from hub.media.temporal import TemporalFilter

log = logging.getLogger(__name__)

RID_URI = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id"
REPAIRED_RID_URI = "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id"
#: More layers than this make no sense for a camera; an offer with more is refused.
MAX_LAYERS = 4
# RFC 8851 section 10: rid-syntax is alphanumeric, '-' and '_'; 16 characters is what browsers use at most.
_RID = re.compile(r"^[A-Za-z0-9_-]{1,16}$")


class SimulcastError(ValueError):
    """A simulcast offer the hub cannot take; the message says why."""


@dataclass(frozen=True, slots=True)
class SimulcastOffer:
    """The simulcast part of an offer's video section."""

    #: The layers' rids in the offer's order.
    rids: tuple[str, ...]
    rid_ext: int
    repaired_ext: int | None


def _video_section(sdp: str) -> list[str]:
    lines = sdp.replace("\r\n", "\n").split("\n")
    start = next((i for i, line in enumerate(lines) if line.startswith("m=video")), None)
    if start is None:
        return []
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("m=")), len(lines))
    return lines[start:end]


def read_offer(sdp: str) -> SimulcastOffer | None:
    """The simulcast layers an offer's video section sends, or None without simulcast."""
    section = _video_section(sdp)
    simulcast = [line for line in section if line.startswith("a=simulcast:")]
    if not simulcast:
        return None
    if len(simulcast) > 1:
        raise SimulcastError("more than one a=simulcast line in the video section")
    parts = simulcast[0][len("a=simulcast:") :].split()
    if len(parts) != 2 or parts[0] != "send":
        raise SimulcastError("a WHIP offer's a=simulcast must be 'send <rid>;<rid>...'")
    # Each ';'-separated stream may list alternatives (','); the first is the one sent. '~' marks a paused one.
    rids = tuple(stream.split(",")[0].lstrip("~") for stream in parts[1].split(";"))
    if not all(_RID.match(rid) for rid in rids) or len(set(rids)) != len(rids):
        raise SimulcastError(f"bad or repeated rid in a=simulcast: {parts[1]!r}")
    if not 2 <= len(rids) <= MAX_LAYERS:
        raise SimulcastError(f"a simulcast offer has 2 to {MAX_LAYERS} layers, not {len(rids)}")
    declared = {line.split()[0][len("a=rid:") :] for line in section if line.startswith("a=rid:") and " send" in line}
    if missing := [rid for rid in rids if rid not in declared]:
        raise SimulcastError(f"a=simulcast names rids with no 'a=rid:<rid> send' line: {', '.join(missing)}")
    ext: dict[str, int] = {}
    for line in section:
        if line.startswith("a=extmap:"):
            head, _, uri = line[len("a=extmap:") :].partition(" ")
            if head.split("/")[0].isdigit():
                ext[uri.split()[0] if uri else ""] = int(head.split("/")[0])
    if RID_URI not in ext:
        raise SimulcastError(f"a simulcast offer must map the {RID_URI} header extension")
    return SimulcastOffer(rids, ext[RID_URI], ext.get(REPAIRED_RID_URI))


def accept(transceiver: RTCRtpTransceiver, offer: SimulcastOffer) -> None:
    """Make the answer carry the rid extensions, and aiortc's receiver parse them."""
    extensions = [RTCRtpHeaderExtensionParameters(id=offer.rid_ext, uri=RID_URI)]
    if offer.repaired_ext is not None:
        extensions.append(RTCRtpHeaderExtensionParameters(id=offer.repaired_ext, uri=REPAIRED_RID_URI))
    transceiver._headerExtensions = [*transceiver._headerExtensions, *extensions]


def answer(sdp: str, offer: SimulcastOffer) -> str:
    """The answer with the video section receiving the offered layers."""
    lines = sdp.split("\r\n")
    start = next(i for i, line in enumerate(lines) if line.startswith("m=video"))
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("m=")), len(lines))
    while end > start and not lines[end - 1]:
        end -= 1  # before the final empty line
    added = [f"a=rid:{rid} recv" for rid in offer.rids] + ["a=simulcast:recv " + ";".join(offer.rids)]
    return "\r\n".join(lines[:end] + added + lines[end:])


def vp8_keyframe_size(payload: bytes) -> tuple[int, int] | None:
    """(width, height) from the first packet of a VP8 keyframe (RFC 6386 section 9.1)."""
    pos = vp8_payload_start(payload)
    if pos is None or payload[pos] & 0x01 or len(payload) < pos + 10:
        return None
    if payload[pos + 3 : pos + 6] != b"\x9d\x01\x2a":
        return None
    width = int.from_bytes(payload[pos + 6 : pos + 8], "little") & 0x3FFF
    height = int.from_bytes(payload[pos + 8 : pos + 10], "little") & 0x3FFF
    return width, height


class Layer(TrackSource):
    """One simulcast layer: the packets of one RTP stream, its size and bitrate."""

    def __init__(
        self,
        rid: str,
        index: int,
        keyframe_interval: float,
        pli: Callable[[Layer], None],
        receiver: RTCRtpReceiver | None = None,
    ) -> None:
        # With a receiver of its own (a relay's pull) it asks that receiver for keyframes, not `pli`.
        super().__init__(receiver, "video", keyframe_interval, lambda: pli(self))
        self.rid = rid
        #: Position in the offer: orders layers whose size is not known yet.
        self.index = index
        self.ssrc: int | None = None
        self.width = 0
        self.height = 0
        self.nack = NackGenerator()
        #: Payload bits per second, over the last `_WINDOW` seconds.
        self.bitrate = 0
        self._window_start = time.monotonic()
        self._window_bytes = 0
        #: When its last packet came (monotonic): Chromium pauses a layer its estimate cannot carry.
        self.last_at = 0.0

    def count(self, packet: RtpPacket, codec: RTCRtpCodecParameters) -> bool:
        """Count a packet of this layer; True when it shows a new picture size."""
        now = time.monotonic()
        self.last_at = now
        self._window_bytes += len(packet.payload)
        if now - self._window_start >= _WINDOW:
            self.bitrate = int(self._window_bytes * 8 / (now - self._window_start))
            self._window_start, self._window_bytes = now, 0
        if codec.mimeType.lower() == "video/vp8" and (size := vp8_keyframe_size(packet.payload)) is not None:
            if size != (self.width, self.height):
                self.width, self.height = size
                return True
        return False


_WINDOW = 1.0


class SimulcastSource(TrackSource):
    """A simulcast video track: demultiplexes its RTP streams into `layers`,
    lowest first; its own sinks get the top layer."""

    def __init__(self, receiver: RTCRtpReceiver, offer: SimulcastOffer, keyframe_interval: float) -> None:
        super().__init__(receiver, "video", keyframe_interval)
        self._start({rid: Layer(rid, i, keyframe_interval, self._pli) for i, rid in enumerate(offer.rids)})

    def _start(self, layers: dict[str, Layer]) -> None:
        """Its layers, none sent yet (a publisher's, or a relay's pulled ones)."""
        self._layers = layers
        self._by_ssrc: dict[int, Layer] = {}
        self._order: list[Layer] = []
        #: When packets came again after the whole stream was silent (monotonic): a publisher short
        #: of CPU stalls all its layers at once, and they come back one by one, lowest first.
        self.resumed_at = 0.0
        self._last_at = 0.0

    @property
    def layers(self) -> list[Layer]:
        """The layers the publisher sends, lowest first: by the size their
        keyframes show, else in the offer's order. A layer offered but never
        sent is none (Chromium drops the top one of a small camera's three)."""
        return self._order

    def _sort(self) -> None:
        layers = [layer for layer in self._layers.values() if layer.ssrc is not None]
        if all(layer.height for layer in layers):
            layers.sort(key=lambda layer: (layer.width * layer.height, layer.index))
        self._order = layers

    def layer(self, rid: str) -> Layer | None:
        return self._layers.get(rid)

    @property
    def offered(self) -> list[Layer]:
        """Every layer in the publisher's offer order, sent or not: what a relay pulls."""
        return list(self._layers.values())

    def at_least(self, width: int) -> TrackSource:
        """The lowest layer at least `width` pixels wide, else this source (the top layer)."""
        return next((layer for layer in self.layers if layer.width >= width), self)

    def _layer_of(self, packet: RtpPacket) -> Layer | None:
        layer = self._by_ssrc.get(packet.ssrc)
        if layer is None and (rid := packet.extensions.rtp_stream_id) is not None:
            layer = self._layers.get(rid)
            if layer is not None:
                # A publisher that restarts a layer's stream (new SSRC) keeps its rid.
                if layer.ssrc is not None:
                    self._by_ssrc.pop(layer.ssrc, None)
                layer.ssrc = packet.ssrc
                self._by_ssrc[packet.ssrc] = layer
                self._sort()
        return layer

    def _repaired_ssrc(self, rtx: RtpPacket) -> int | None:
        ssrc = super()._repaired_ssrc(rtx)
        if ssrc is None and (rid := rtx.extensions.repaired_rtp_stream_id) is not None:
            layer = self._layers.get(rid)
            ssrc = layer.ssrc if layer is not None else None
        return ssrc

    def _nack_generator(self, packet: RtpPacket) -> NackGenerator | None:
        layer = self._layer_of(packet)
        return layer.nack if layer is not None else None

    def _deliver(self, packet: RtpPacket, codec: RTCRtpCodecParameters) -> None:
        layer = self._layer_of(packet)
        if layer is None:
            return  # a stream with no rid yet: its layer is not known
        self._take(layer, packet, codec)

    def _take(self, layer: Layer, packet: RtpPacket, codec: RTCRtpCodecParameters) -> None:
        """A packet of one layer: to that layer's sinks, and of the top layer to this source's."""
        if layer.ssrc != packet.ssrc:  # a pulled layer's first packet, or its stream restarted upstream
            layer.ssrc = packet.ssrc
            self._sort()
        now = time.monotonic()
        if now - self._last_at >= SILENT / 2:
            self.resumed_at = now
        self._last_at = now
        self.codec = layer.codec = codec
        if layer.count(packet, codec):
            self._sort()
        layer.forward(packet)
        if layer is self._order[-1]:  # not empty: the packet's layer is in it
            self._media_ssrc = packet.ssrc
            self.forward(packet)

    def _pli(self, layer: Layer) -> None:
        if self._receiver is not None and layer.ssrc is not None:
            asyncio.ensure_future(self._receiver._send_rtcp_pli(layer.ssrc))

    def close(self) -> None:
        for layer in self._layers.values():
            layer.close()
        super().close()


class PulledLayer(Layer):
    """A layer a relay pulls from another hub process as a track of its own."""

    def __init__(self, simulcast: PulledSimulcast, rid: str, index: int, receiver: RTCRtpReceiver) -> None:
        super().__init__(rid, index, simulcast._keyframe_interval, simulcast._pli, receiver)
        self._simulcast = simulcast

    def _deliver(self, packet: RtpPacket, codec: RTCRtpCodecParameters) -> None:
        self._media_ssrc = packet.ssrc  # where this layer's keyframe requests go
        self._simulcast._take(self, packet, codec)


class PulledSimulcast(SimulcastSource):
    """A relay's copy of a simulcast track (hub.media.relay): each layer
    pulled as its own track, in the publisher's offer order; to the
    `LayerSwitch`es, recorder and relays of this process it is the
    publisher's `SimulcastSource`."""

    def __init__(self, receivers: list[tuple[str, RTCRtpReceiver]], keyframe_interval: float) -> None:
        TrackSource.__init__(self, None, "video", keyframe_interval)
        self._start({rid: PulledLayer(self, rid, i, receiver) for i, (rid, receiver) in enumerate(receivers)})

    def request_keyframe(self) -> None:
        if self._order:
            self._order[-1].request_keyframe()  # its own sinks get the top layer

    def take_layers(self, receivers: list[tuple[str, RTCRtpReceiver]]) -> bool:
        """A relay pulled anew: each layer takes the new pull's receiver of
        its rid (TrackSource.take); False, taking none, if the layers differ."""
        if sorted(rid for rid, _ in receivers) != sorted(self._layers):
            return False
        for rid, receiver in receivers:
            self._layers[rid].take(receiver)
        return True


def name_layers(sdp: str, rids: dict[str, str]) -> str:
    """An answer whose video sections (by mid) each carry one layer, named
    by an `a=rid:<rid> send` line (RFC 8851 allows a rid without simulcast)."""
    out: list[str] = []
    rid: str | None = None
    for line in sdp.split("\r\n"):
        if line.startswith("m=") or not line:
            if rid is not None:
                out.append(f"a=rid:{rid} send")
            rid = None
        elif line.startswith("a=mid:"):
            rid = rids.get(line[len("a=mid:") :])
        out.append(line)
    return "\r\n".join(out)


def named_layers(sdp: str) -> dict[str, str]:
    """Mid -> rid of each section `name_layers` named."""
    named: dict[str, str] = {}
    mid: str | None = None
    for line in sdp.replace("\r\n", "\n").split("\n"):
        if line.startswith("m="):
            mid = None
        elif line.startswith("a=mid:"):
            mid = line[len("a=mid:") :]
        elif line.startswith("a=rid:") and mid is not None and _RID.match(rid := line[len("a=rid:") :].split()[0]):
            named[mid] = rid
    return named


@dataclass(frozen=True, slots=True)
class Tile:
    """The size (CSS pixels times device pixel ratio) a viewer renders a stream at; 0×0: hidden."""

    width: int
    height: int

    @property
    def hidden(self) -> bool:
        return not self.width or not self.height


@dataclass(frozen=True, slots=True)
class LayerState:
    """What a subscription's layer switch shows: the API and /metrics read it."""

    #: The rid the viewer receives now (None: hidden, or not started).
    layer: str | None
    #: The rid it waits to switch to at that layer's next keyframe.
    target: str | None
    #: (rid, width, height, bits/s) of each layer, lowest first; 0 where not known yet.
    layers: tuple[tuple[str, int, int, int], ...]
    #: The viewer's REMB, bits/s.
    estimate: int | None
    #: Changes of layer, and resumptions after a hidden spell.
    switches: int
    #: The highest VP8 temporal layer (TID) the viewer receives; None: the stream has none.
    temporal: int | None = None


#: Capacity a viewer with audio leaves to it (Opus at 32-48 kbit/s, with packet headers).
AUDIO_RESERVE = 48_000
#: A layer is sent only while its bitrate stays under this share of the viewer's estimate.
HEADROOM = 0.85
#: Receiver-reported loss (fraction) above which the viewer's link is taken as full.
LOSSY = 0.1
#: A low estimate counts only with at least this much loss: a delay-based
#: estimator on a busy machine reads scheduling delays as a full link (an
#: aiortc viewer here sent REMB of 37 kbit/s while 100 kbit/s arrived without loss).
LOSS_SEEN = 0.02
#: Seconds after a switch during which feedback is not acted on: the viewer's
#: estimator (REMB) follows the new rate only after a while.
SETTLE = 2.0
#: Seconds without congestion before the switch probes the next layer up
#: (see `Probe`); a probe that meets loss doubles the wait for that layer,
#: up to `PROBE_HOLD`. A climb that meets congestion within `PROBE` seconds
#: all the same doubles it, up to `MAX_HOLD`; one that holds resets it.
UP_HOLD = 3.0
PROBE = 8.0
MAX_HOLD = 48.0
#: The longest wait between two probes that failed: a failed probe costs its
#: viewer some loss (NACKs repair most) but no switch, and a longer wait keeps
#: a viewer whose link has recovered low for longer.
PROBE_HOLD = 6.0
#: Seconds a probe sends padding at each layer's rate before that layer counts as carried.
PROBE_STEP = 1.0
#: Receiver reports that come this long after a probe still count its
#: padding's loss (aiortc's come every 0.5-1.5 s): they are the probe's, not
#: the layer's.
PROBE_TAIL = 1.5
#: A probe's packets: RTP padding only, the most one packet carries (its length is one byte).
PAD_SIZE = 255
#: How often a probe sends its padding (seconds): paced, as a bottleneck's queue takes it.
PAD_EVERY = 0.02
#: Packets a probe step sends before the viewer's NACKs can fail it.
PROBE_COUNT = 20
#: A layer with no packet for this long is paused (seconds; a layer sends ≥ 10 packets a second).
SILENT = 1.0
#: How long a switch waits for the target layer's keyframe before asking again.
ASK_AGAIN = 1.0


def watch_feedback(
    sender: RTCRtpSender,
    on_estimate: Callable[[int], None],
    on_loss: Callable[[float], None],
    on_nack: Callable[[list[int]], None] | None = None,
) -> None:
    """Pass a viewer's REMB (bits/s), receiver-reported loss (fraction) and
    NACKed sequence numbers for this sender's SSRC on, as aiortc's sender
    receives them."""
    handle = sender._handle_rtcp_packet
    ssrc = sender._ssrc
    # REMB straight from the socket callback, past the wrapper below (which
    # takes what reaches the sender through aiortc's queue instead).
    door.on_remb(sender, on_estimate)

    async def handle_rtcp(packet: AnyRtcpPacket) -> None:
        if isinstance(packet, RtcpPsfbPacket) and packet.fmt == RTCP_PSFB_APP:
            try:
                bitrate, ssrcs = unpack_remb_fci(packet.fci)
            except ValueError:
                bitrate, ssrcs = 0, []
            if ssrc in ssrcs:
                on_estimate(bitrate)
        elif isinstance(packet, RtcpRrPacket):
            for report in packet.reports:
                if report.ssrc == ssrc:
                    on_loss(report.fraction_lost / 256)
        elif on_nack is not None and isinstance(packet, RtcpRtpfbPacket) and packet.fmt == RTCP_RTPFB_NACK:
            if packet.media_ssrc == ssrc:
                on_nack(packet.lost)
        await handle(packet)

    sender._handle_rtcp_packet = handle_rtcp  # type: ignore[method-assign]


@dataclass(slots=True)
class Probe:
    """A try of the layers above the one a viewer gets, before it climbs.

    REMB cannot show spare capacity (an estimator follows what it receives),
    so before a climb the switch sends the viewer padding, `PROBE_STEP`
    seconds per layer, at the rate that layer needs over the current one, as
    LiveKit and mediasoup probe before a subscriber's climb. The padding is
    RTP padding-only packets in the viewer's own sequence (`TrackSink.pad`):
    its decoder never sees them (aiortc's receiver and libwebrtc's take them
    as empty packets), but its NACKs and receiver reports count them. A step
    whose packets the viewer reports lost (NACKs for more than `LOSSY` of
    them, or a receiver report above `LOSSY`) ends the probe; the switch
    climbs to the highest layer whose step passed, if any.
    """

    #: The layers it tries, lowest first: those above the current one, up to the one wanted.
    layers: list[Layer]
    step_started: float
    #: The viewer's estimate (REMB) when the probe began, for the log.
    estimate: int | None
    step: int = 0
    #: The highest layer whose step passed.
    passed: Layer | None = None
    failed: bool = False
    #: Packets sent to the viewer in this step, and those of them it NACKed (outgoing numbers).
    sent: int = 0
    nacked: set[int] = field(default_factory=set)
    #: Padding bytes due, and when they were last counted (monotonic).
    owed: float = 0.0
    paced_at: float = 0.0


class LayerSwitch:
    """One viewer's video from a simulcast stream: one layer at a time.

    It is the `Fanout` of that viewer's `TrackSink` (the sink adds itself
    to `sinks`) and a `Sink` of the layer it forwards and, while switching,
    of the layer it waits to start at a keyframe.
    """

    kind = "video"

    def __init__(self, source: SimulcastSource, audio: bool) -> None:
        self.sinks: set[Sink] = set()
        self.source = source
        self._reserve = AUDIO_RESERVE if audio else 0
        self.tile: Tile | None = None
        #: The viewer's estimate of its link (REMB, bits/s); None until it sends one.
        self.estimate: int | None = None
        self.loss = 0.0
        self.current: Layer | None = None
        self.target: Layer | None = None
        self.switches = 0
        self._offset = 0
        #: Counts the runs of packets after the first (0: as they came).
        self._run = 0
        #: The SSRC of the current layer's packets in this run: another one is its stream restarted.
        self._ssrc: int | None = None
        self._last: tuple[int, float] | None = None  # (outgoing timestamp, monotonic) of the newest packet
        #: The highest layer the viewer's link carries (None: no limit seen). A
        #: layer, not a position: positions change as layers pause and resume.
        self._cap: Layer | None = None
        self._calm_since = time.monotonic()
        self._switched_at = 0.0
        self._climb: tuple[Layer, float] | None = None  # the last climb, and when
        #: Seconds of calm before a layer (by rid) is probed again.
        self._holds: dict[str, float] = {}
        #: The viewer's `TrackSink`, which sends a probe's padding (set by the router).
        self.viewer: TrackSink | None = None
        self.probe: Probe | None = None
        self.probes = 0
        self._probed_at = -PROBE_TAIL  # when the last probe ended
        self._pad_timer: asyncio.TimerHandle | None = None
        #: The newest sequence number forwarded of the current layer, and whether it ended a frame.
        self._newest: int | None = None
        self._frame_done = False
        self._closed = False
        self._asked_at = 0.0  # when the target layer's keyframe was last asked for
        #: The viewer's temporal layers of the lowest spatial layer (hub.media.temporal), if VP8.
        self.temporal: TemporalFilter | None = None
        self._retarget(self._choose(time.monotonic()))
        # Re-decided at every tick of the process's shared timer (one wake-up for all viewers).
        self._timer = ticker().every(self._tick)

    @property
    def mime_type(self) -> str:
        return self.source.mime_type

    @property
    def layer(self) -> str | None:
        """The rid of the layer this viewer receives (None: none yet, or hidden)."""
        return self.current.rid if self.current is not None else None

    def watch(self, sender: RTCRtpSender) -> None:
        """Read the viewer's REMB, receiver reports and NACKs as aiortc's sender receives them."""
        watch_feedback(sender, self._on_estimate, self._on_loss, self._on_nack)

    def _on_estimate(self, bitrate: int) -> None:
        self.estimate = bitrate

    def _on_loss(self, loss: float) -> None:
        probe = self.probe
        if probe is not None:
            if loss > LOSSY:
                self._fail(probe)
        elif time.monotonic() - self._probed_at >= PROBE_TAIL:
            self.loss = loss  # (a report that covers a probe tells of its padding, not of the layer)

    def _on_nack(self, lost: list[int]) -> None:
        probe = self.probe
        if probe is None or probe.failed:
            return
        probe.nacked.update(lost)
        if probe.sent >= PROBE_COUNT and len(probe.nacked) > LOSSY * probe.sent:
            self._fail(probe)

    def set_tile(self, tile: Tile) -> None:
        self.tile = tile
        self._retarget(self._choose(time.monotonic()))

    def request_keyframe(self) -> None:
        layer = self.target or self.current
        if layer is not None:
            layer.request_keyframe()

    # -- the choice ----------------------------------------------------------

    def _wanted(self, layers: list[Layer]) -> Layer | None:
        """The smallest layer that fills the tile (the top one if sizes are unknown)."""
        tile = self.tile
        if not layers:
            return None  # none sent yet: the next tick looks again
        if tile is None:
            return layers[-1]
        if tile.hidden:
            return None
        for layer in layers:
            # A layer an eighth short of the tile still looks sharp enough scaled up.
            if layer.height * 8 >= tile.height * 7 and layer.width * 8 >= tile.width * 7:
                return layer
        return layers[-1]

    def _choose(self, now: float) -> Layer | None:
        """The layer to send: the one the tile needs, or a lower one while
        the link cannot carry it."""
        # A layer the publisher has paused is no choice: a viewer on it would
        # freeze. Paused is silent while another layer sends: a publisher (or
        # hub) stalled for a second pauses none (measured from the clock, a
        # stall between one layer's packets and the next's could move a
        # viewer of the low layer to the top one). And after a stall of the
        # whole stream each layer has SILENT seconds to come back: a test's
        # Python publisher, stalled 1.8 s at a load of 12, sent q first, and
        # its viewer went from h to q and back.
        layers = self.source.layers
        if now - self.source.resumed_at >= SILENT:
            newest = max((layer.last_at for layer in layers), default=now)
            layers = [layer for layer in layers if newest - layer.last_at < SILENT]
        wanted = self._wanted(layers)
        if wanted is None:
            self._end_probe(now)
            return None
        self._follow_link(now, layers, wanted)
        cap = self._cap
        if cap is None:
            return wanted
        order = self.source.layers
        top = order.index(cap) if cap in order else 0
        if order.index(wanted) <= top:
            return wanted
        under = [layer for layer in layers if order.index(layer) <= top]
        return under[-1] if under else layers[0]

    def _follow_link(self, now: float, layers: list[Layer], wanted: Layer) -> None:
        """Move `_cap` down at congestion, up after a calm spell and a probe.

        REMB alone cannot show spare capacity: an estimator follows what it
        receives (Chromium's and aiortc's stay near 1.5 times that). So heavy
        loss, or an estimate under what the current layer needs together
        with some loss, lowers the cap to what fits; climbing back waits for
        a `Probe` of the layers above, held back longer after each failed one.
        """
        current = self.current
        if current is None or current not in layers:
            self._end_probe(now)
            return
        if self.probe is not None:
            self._judge(self.probe, now)
            return
        index = layers.index(current)
        # Heavy loss just after a climb is the new layer's own (there was none before it): waiting
        # out SETTLE froze a viewer over 300 kbit/s for 2.5 s at 73 % loss before it went back down.
        failing = self._climb is not None and self._climb[0] is current and self.loss > LOSSY
        if now - self._switched_at < SETTLE and not failing:
            return
        temporal = self.temporal
        if index == 0 and temporal is not None and temporal.decide(now, self.estimate, self.loss, self._reserve):
            return  # at the lowest layer the frame rate goes first, and comes back first
        budget = None if self.estimate is None else (self.estimate - self._reserve) * HEADROOM
        congested = self.loss > LOSSY or (budget is not None and budget < current.bitrate and self.loss >= LOSS_SEEN)
        if congested:
            self._calm_since = now
            if self._climb is not None and self._climb[0] is current and now - self._climb[1] < PROBE:
                self._hold_longer(current, MAX_HOLD)
            self._climb = None
            fits = [layer for layer in layers[:index] if budget is None or layer.bitrate <= budget]
            cap = fits[-1] if fits else layers[0]
            if self.loss > LOSSY:
                cap = layers[min(layers.index(cap), max(index - 1, 0))]
            if cap is self._cap or (self._cap is None and cap is layers[-1]):
                return
            self._cap = cap
            log.info(
                "a viewer's link is full (estimate %s bit/s, loss %.0f%%, layer %s at %d bit/s): down to %s",
                self.estimate,
                self.loss * 100,
                current.rid,
                current.bitrate,
                cap.rid,
            )
            return
        if self._climb is not None and now - self._climb[1] >= PROBE:
            self._holds.pop(self._climb[0].rid, None)  # the climb held
            self._climb = None
        above = layers[index + 1 : layers.index(wanted) + 1]
        if above and self.target is None and now - self._calm_since >= self._holds.get(above[0].rid, UP_HOLD):
            self.probe = Probe(above, now, self.estimate, paced_at=time.monotonic())
            self.probes += 1
            self._pad()

    def _hold_longer(self, layer: Layer, most: float) -> None:
        hold = self._holds.get(layer.rid, UP_HOLD)
        self._holds[layer.rid] = max(hold, min(most, 2 * hold))

    def _fail(self, probe: Probe) -> None:
        """The viewer reports the probe's step lost: no more padding (the next tick decides)."""
        probe.failed = True
        self._stop_padding()

    def _stop_padding(self) -> None:
        if self._pad_timer is not None:
            self._pad_timer.cancel()
            self._pad_timer = None

    def _judge(self, probe: Probe, now: float) -> None:
        """End a probe's step when it failed or lasted `PROBE_STEP`; climb after the last."""
        if not probe.failed:
            if now - probe.step_started < PROBE_STEP:
                return
            probe.passed = probe.layers[probe.step]
            probe.step += 1
            if probe.step < len(probe.layers):
                probe.step_started, probe.sent, probe.nacked = now, 0, set()
                return
        self._end_probe(now)
        self._calm_since = now
        tried = probe.layers[min(probe.step, len(probe.layers) - 1)]
        log.info(
            "a viewer's probe of layer %s %s (%d packets, %d NACKed in its last step; estimate %s bit/s before,"
            " %s after): %s",
            tried.rid,
            "failed" if probe.failed else "held",
            probe.sent,
            len(probe.nacked),
            probe.estimate,
            self.estimate,
            f"up to {probe.passed.rid}" if probe.passed is not None else "staying",
        )
        if probe.failed:
            self._hold_longer(tried, PROBE_HOLD)
        if probe.passed is None:
            return
        self._cap = probe.passed
        self._climb = (probe.passed, now)

    def _end_probe(self, now: float) -> None:
        if self.probe is None:
            return
        self._stop_padding()
        self.probe = None
        self._probed_at = now

    def _pad(self) -> None:
        """Send the probe's padding owed since the last call, between frames: a padding packet in a
        frame's sequence numbers would split it."""
        probe, current, viewer = self.probe, self.current, self.viewer
        if probe is None or probe.failed or self._closed or current is None:
            return
        now = time.monotonic()
        rate = max(0, probe.layers[min(probe.step, len(probe.layers) - 1)].bitrate - current.bitrate) / 8
        # What piles up while a frame goes out is sent after it, up to 100 ms' worth: no burst.
        probe.owed = min(probe.owed + rate * (now - probe.paced_at), rate * 0.1)
        probe.paced_at = now
        if viewer is not None and self._frame_done:
            while probe.owed >= PAD_SIZE and viewer.pad(PAD_SIZE):
                probe.owed -= PAD_SIZE
                probe.sent += 1
        self._pad_timer = asyncio.get_running_loop().call_later(PAD_EVERY, self._pad)

    def _tick(self) -> None:
        if self._closed:
            return
        now = time.monotonic()
        self._retarget(self._choose(now))
        # A request made before the layer's stream was known (no SSRC yet, as
        # when a relay pulls a stream the moment it is published) reached no
        # one, and a publisher sends keyframes only when asked: ask again.
        if self.target is not None and now - self._asked_at >= ASK_AGAIN:
            self._asked_at = now
            self.target.request_keyframe()

    def _retarget(self, layer: Layer | None) -> None:
        if layer is (self.target or self.current):
            return
        if self.target is not None and self.target is not self.current:
            self.target.sinks.discard(self)
        if layer is None:  # hidden: nothing at all
            if self.current is not None:
                self.current.sinks.discard(self)
            self.current = self.target = None
            return
        if layer is self.current:
            self.target = None
            return
        self.target = layer
        layer.sinks.add(self)
        self._asked_at = time.monotonic()
        layer.request_keyframe()

    # -- the packets ---------------------------------------------------------

    def push(self, packet: RtpPacket, shared: Outgoing) -> None:
        target = self.target
        if target is not None and packet.ssrc == target.ssrc:
            if not is_keyframe_start(self.mime_type, packet.payload):
                return
            self._switch(target, packet)
        elif self.current is None or packet.ssrc != self.current.ssrc:
            return
        elif packet.ssrc != self._ssrc:
            # The current layer's stream restarted (a relay pulled anew from another hub, a
            # publisher's new SSRC): to the viewer a run of its own, from a keyframe. Sent in the
            # old run's numbers, its first packets were dropped as old (or left a wide gap).
            if not is_keyframe_start(self.mime_type, packet.payload):
                self.current.request_keyframe()  # at most once per interval (TrackSource)
                return
            self._switch(self.current, packet)
        number = packet.sequence_number
        if self._newest is None or (number - self._newest) & 0xFFFF < 0x8000:
            self._newest, self._frame_done = number, bool(packet.marker)
        if self.probe is not None:
            self.probe.sent += 1
        timestamp = (packet.timestamp + self._offset) & 0xFFFFFFFF
        self._last = (timestamp, time.monotonic())
        if self._run:
            # Each run of packets after a switch (or a hidden spell) is a new
            # source to the sink: its sequence numbers continue the viewer's.
            packet = RtpPacket(
                payload_type=packet.payload_type,
                marker=packet.marker,
                sequence_number=packet.sequence_number,
                timestamp=timestamp,
                ssrc=self._run,
                payload=packet.payload,
            )
        for sink in tuple(self.sinks):
            sink.push(packet, shared)

    def _switch(self, layer: Layer, packet: RtpPacket) -> None:
        """Send `layer` from `packet` (a keyframe's first) on: a layer taken up (another one, or
        any after a hidden spell), or the current one after its stream restarted."""
        restart = layer is self.current
        if self.current is not None and not restart:
            self.current.sinks.discard(self)
        if self._last is not None:
            # The new run's clock has another origin: continue the outgoing
            # one by the time that passed since the last packet sent.
            last_ts, last_at = self._last
            elapsed = max(1, round((time.monotonic() - last_at) * (layer.codec.clockRate if layer.codec else 90000)))
            self._offset = (last_ts + elapsed - packet.timestamp) & 0xFFFFFFFF
            self._run += 1
            if not restart:
                self.switches += 1
        self.current, self.target, self._ssrc = layer, None, packet.ssrc
        self._newest = None
        if not restart:
            self._switched_at = time.monotonic()

    def state(self) -> LayerState:
        return LayerState(
            self.layer,
            self.target.rid if self.target is not None else None,
            tuple((layer.rid, layer.width, layer.height, layer.bitrate) for layer in self.source.layers),
            self.estimate,
            self.switches,
            self.temporal.layer if self.temporal is not None else None,
        )

    def close(self) -> None:
        self._closed = True
        self._timer.cancel()
        self._end_probe(time.monotonic())
        for layer in (self.current, self.target):
            if layer is not None:
                layer.sinks.discard(self)
        for sink in tuple(self.sinks):
            sink.close()
