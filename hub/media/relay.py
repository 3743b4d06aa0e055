"""A relay: this process's pull of a stream another hub process hosts.

The pull is one WHEP session to the upstream hub, made by this process as
the client: a recvonly peer connection (DTLS-SRTP, so the hop is encrypted
whatever the network) whose receivers `TrackSource`s take over exactly as
for a WHIP publisher. Its packets then fan out to local viewers like any
stream's; their keyframe requests go upstream as PLI on the relay's
receiver, throttled as for a publisher.

A simulcast stream is pulled with all its layers, each as a track of its
own: the pull offers `MAX_LAYERS` video sections, the upstream answers one
layer in each (named by an `a=rid` line, hub.media.layers.name_layers) and
the rest inactive, and this process's source becomes a `PulledSimulcast`,
so that its viewers' `LayerSwitch`es choose among the layers as on the
origin. A stream without simulcast fills the first section alone.

How the offer reaches the upstream hub (HTTP, a cluster credential) is not
this package's business: the caller passes an `Upstream`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from typing import Protocol

from aioice.ice import StunProtocol
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpReceiver, RTCSessionDescription

from hub.media import door, reader
from hub.media.forward import TrackSource, offered_codecs, report_receptions_slowly
from hub.media.layers import MAX_LAYERS, PulledSimulcast, named_layers


class RelayError(Exception):
    """The upstream hub could not be pulled from; the message says why."""


class Upstream(Protocol):
    """The other end of a pull: a hub that answers a WHEP offer."""

    async def exchange(self, offer: str) -> str:
        """Send the SDP offer, return the answer; raise RelayError if refused."""
        ...

    async def close(self) -> None:
        """End the session upstream (best effort: the upstream may be gone)."""
        ...


ABS_SEND_TIME = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"


def without_abs_send_time(sdp: str) -> str:
    """A pull's offer less the abs-send-time header extension.

    It serves only receiver-side bandwidth estimation (REMB), and the
    upstream hub forwards packets as they came, so it ignores REMB: without
    it the upstream writes no per-packet send time into the pull's packets
    and this process runs no estimator on them, measured at about 21 µs of
    CPU per packet, over half of what forwarding one to a viewer costs.
    """
    return "".join(
        line for line in sdp.splitlines(keepends=True) if not (line.startswith("a=extmap:") and ABS_SEND_TIME in line)
    )


async def open_pull(
    configuration: RTCConfiguration,
    kinds: list[str],
    upstream: Upstream,
    keyframe_interval: float,
    connect_timeout: float,
    sources: Mapping[str, TrackSource] | None = None,
) -> tuple[RTCPeerConnection, dict[str, TrackSource]]:
    """Pull `kinds` of a stream from `upstream`, connected (ICE + DTLS), its
    tracks ready to fan out; anything that fails closes both ends.

    With `sources` (a relay pulled anew) those sources take the new pull's
    receivers before any packet arrives, so that its first packet, a
    keyframe (the upstream starts a new viewer at one), reaches their sinks."""
    pc = RTCPeerConnection(configuration)
    state = asyncio.Event()

    @pc.on("connectionstatechange")
    def _on_state() -> None:
        if pc.connectionState in ("connected", "failed", "closed"):
            state.set()

    try:
        # Video first: aiortc (1.16, balanced bundle policy) gives a second
        # section of a kind the first one's transport and never moves it onto
        # the BUNDLE's, so behind an audio section the layers after the first
        # were left on a transport it stops (on both ends).
        for kind in sorted(kinds, key=lambda kind: kind != "video"):
            for _ in range(MAX_LAYERS if kind == "video" else 1):
                report_receptions_slowly(pc.addTransceiver(kind, direction="recvonly").receiver)
        offer = await pc.createOffer()
        # Gathers every candidate (no trickle).
        await pc.setLocalDescription(RTCSessionDescription(sdp=without_abs_send_time(offer.sdp), type="offer"))
        answer = await upstream.exchange(pc.localDescription.sdp)
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        except Exception as exc:  # aiortc reports bad SDP with assorted errors
            raise RelayError(f"the upstream hub's answer does not apply: {exc}") from exc
        pulled: dict[str, TrackSource] = {}
        rids = named_layers(answer)
        layers: list[tuple[str, RTCRtpReceiver]] = []
        for transceiver in pc.getTransceivers():
            codecs = offered_codecs(transceiver)
            kind = transceiver.kind
            if transceiver.currentDirection != "recvonly" or not codecs or kind in pulled:
                continue  # the stream has no such track (or layer)
            if transceiver.mid in rids:
                layers.append((rids[transceiver.mid], transceiver.receiver))
                if len(layers) < len(rids):
                    continue
                source = _layered(layers, keyframe_interval, sources)
            elif sources is None:
                source = TrackSource(transceiver.receiver, kind, keyframe_interval)
            elif kind in sources:
                source = sources[kind]
                source.take(transceiver.receiver)
            else:
                continue
            # The upstream answered with exactly the stream's codec (restrict_codecs).
            source.codec = codecs[0]
            pulled[kind] = source
        if not pulled or (sources is not None and pulled.keys() != sources.keys()):
            raise RelayError("the upstream hub's answer does not carry the stream's tracks")
        try:
            await asyncio.wait_for(state.wait(), connect_timeout)
        except TimeoutError:
            raise RelayError(f"the pull did not connect within {connect_timeout:g} s") from None
        if pc.connectionState != "connected":
            raise RelayError(f"the pull's connection {pc.connectionState}")
        _read_beside_loop(pc)
        return pc, pulled
    except BaseException:
        await pc.close()
        with contextlib.suppress(Exception):
            await upstream.close()
        raise


def _read_beside_loop(pc: RTCPeerConnection) -> None:
    """Hand the pull's sockets to hub.media.reader: its packets come one
    datagram at a time, and asyncio's wake-up for each cost more than the
    packet's handling; through the door's express lane, which handles most
    of them in C."""
    for transceiver in pc.getTransceivers():
        connection = transceiver.receiver.transport.transport._connection
        for protocol in connection._protocols:
            if isinstance(protocol, StunProtocol) and protocol.transport is not None:
                reader.watch(protocol.transport, door.lane)


def _layered(
    layers: list[tuple[str, RTCRtpReceiver]], keyframe_interval: float, sources: Mapping[str, TrackSource] | None
) -> TrackSource:
    """The source of a pull's simulcast layers: a new one, or the relay's own, its layers taking the new receivers."""
    if sources is None:
        return PulledSimulcast(layers, keyframe_interval)
    source = sources.get("video")
    if not isinstance(source, PulledSimulcast) or not source.take_layers(layers):
        raise RelayError("the upstream hub's answer does not carry the stream's layers")
    return source
