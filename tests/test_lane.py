"""The door's express lane (hub.media.door.lane, hub/media/_fastrecv.c's Lane):
a relay pull's packets handled in C do what the door's Python does with them.

Two Routers in this process, on 127.0.0.1: an origin hosting a stream (an
aiortc publisher whose own packets the test keeps away from the pull) and a
relay pulling it, with a real aiortc viewer on the relay. The test sends the
pull SRTP packets as the origin would (its session's own keys, a fresh SSRC)
into the pull's socket - through the lane, or, to compare, straight to the
door - and compares what the viewer receives and what the pull's receiver
keeps (statistics, NACK state), loss and a late packet included.
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import threading
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiortc import RTCPeerConnection
from aiortc.rtp import RtpPacket

from bench.receive import LocalUpstream, connect
from client.bot import NO_ICE_SERVERS
from hub.media import door, reader
from hub.media.counters import COUNTERS
from hub.media.ice import use_addresses
from hub.media.router import Router

pytestmark = pytest.mark.skipif(door._fastrecv is None, reason="hub.media._fastrecv is not built")

KEYFRAME = b"\x10" + bytes(range(200))  # VP8: S=1, partition 0, P=0
DELTA = b"\x10\x01" + bytes(range(200))
_ssrcs = iter(range(0x1A0E0000, 0x1A0EFFFF))


async def until(condition: Any, timeout: float = 10.0) -> None:
    for _ in range(int(timeout / 0.02)):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("timed out")


@dataclasses.dataclass
class Pull:
    relay: Router
    pc: RTCPeerConnection  # the pull's, on the relay
    upstream: RTCPeerConnection  # the origin's end of it
    viewer: RTCPeerConnection  # a viewer of the relay
    received: list[tuple[int, bytes]]  # what the viewer got: (sequence number, payload)
    compiled: bool  # the compiled send path is on: the lane takes packets


@pytest.fixture
async def pull(forward_path: str) -> AsyncIterator[Pull]:
    """On the "python" send path the lane has no route: the door takes every packet."""
    use_addresses(["127.0.0.1"])
    origin = Router(None, max_backlog=1 << 20, keyframe_interval=1.0, ice_servers=[], connect_timeout=10.0)
    relay = Router(None, 1 << 20, keyframe_interval=1.0, ice_servers=[], connect_timeout=10.0, relay_linger=3600)
    publisher = RTCPeerConnection(NO_ICE_SERVERS)
    publisher.addTransceiver("video", direction="sendonly")  # no track: it sends nothing of its own
    viewer = RTCPeerConnection(NO_ICE_SERVERS)
    viewer.addTransceiver("video", direction="recvonly")
    media: list[str] = []

    async def publish(offer: str) -> str:
        stream, answer = await origin.publish(offer)
        media.append(stream.id)
        return answer

    try:
        await connect(publisher, publish)
        stream_id = media[0]
        await relay.pull(stream_id, ["video"], lambda: LocalUpstream(origin, stream_id))
        pull_pc = relay._producers[stream_id].pc
        upstream_pc = next(iter(origin._producers[stream_id].consumers)).pc

        async def view(offer: str) -> str:
            _, answer = await relay.view(stream_id, offer, "viewer")
            return answer

        await connect(viewer, view)
        pcs = (publisher, pull_pc, upstream_pc, viewer)
        await until(lambda: all(pc.connectionState == "connected" for pc in pcs))
        # The origin's publisher sends nothing: the test is the pull's only sender.
        origin._producers[stream_id].sources["video"].sinks.clear()
        received: list[tuple[int, bytes]] = []
        receiver = viewer.getTransceivers()[0].receiver

        async def record(packet: RtpPacket, arrival_time_ms: int) -> None:
            received.append((packet.sequence_number, packet.payload))

        receiver._handle_rtp_packet = record  # type: ignore[method-assign]
        await asyncio.sleep(0.5)  # DTLS's receive tasks are running
        yield Pull(relay, pull_pc, upstream_pc, viewer, received, forward_path == "c")
    finally:
        await viewer.close()
        await publisher.close()
        await relay.close()
        await origin.close()
        # asyncio calls the closed sockets' connection_lost in a later turn:
        # then they leave the reader, and its thread ends once it has the
        # loop's turn (which it would never get after this test's loop closed).
        await until(lambda: reader.watched(asyncio.get_running_loop()) == 0)
        await until(lambda: not [t for t in threading.enumerate() if t.name == "hub-reader"])


def sender(pull: Pull, through_lane: bool) -> Any:
    """A function that sends the pull's socket one datagram as the origin
    would: from the origin's socket, read by the relay's reader thread and
    handed to the lane; or, for the door, handed to the socket's protocol."""
    receiver = pull.pc.getTransceivers()[0].receiver
    pair = receiver.transport.transport._connection._nominated[1]
    origin = pull.upstream.getTransceivers()[0].sender.transport.transport._connection._nominated[1]
    if through_lane:
        return lambda datagram: origin.protocol.transport.sendto(datagram, origin.remote_addr)
    return lambda datagram: pair.protocol.datagram_received(datagram, pair.remote_addr)


def send(pull: Pull, through_lane: bool) -> Any:
    """A function that puts one RTP packet (seq, payload) on the pull's socket
    as the origin would send it (`sender`)."""
    receiver = pull.pc.getTransceivers()[0].receiver
    put = sender(pull, through_lane)
    srtp = pull.upstream.getTransceivers()[0].sender.transport._tx_srtp
    payload_type = next(iter(receiver._RTCRtpReceiver__codecs))  # type: ignore[attr-defined]
    ssrc = next(_ssrcs)

    def one(seq: int, payload: bytes) -> None:
        packet = RtpPacket(payload_type=payload_type, sequence_number=seq, timestamp=seq * 3000, ssrc=ssrc)
        packet.payload = payload
        put(srtp.protect(packet.serialize()))

    one.ssrc, one.payload_type = ssrc, payload_type  # type: ignore[attr-defined]
    one.receiver = receiver  # type: ignore[attr-defined]
    return one


async def run(pull: Pull, through_lane: bool) -> dict[str, Any]:
    """Packets 0-29, 31-39 (30 lost), then 30 late, then 40-59; what it left."""
    one = send(pull, through_lane)
    express = COUNTERS.packets_express
    order = [*range(30), *range(31, 40), 30, *range(40, 60)]
    for seq in order:
        one(seq, KEYFRAME if seq == 0 else DELTA + bytes([seq]))
        await asyncio.sleep(0.002)
    await until(lambda: len(pull.received) >= len(order))
    await asyncio.sleep(0.1)
    receiver = one.receiver
    stats = receiver._RTCRtpReceiver__remote_streams[one.ssrc]  # type: ignore[attr-defined]
    nack = receiver._RTCRtpReceiver__nack_generator  # type: ignore[attr-defined]
    first = pull.received[0][0]
    return {
        "received": [((seq - first) & 0xFFFF, payload) for seq, payload in pull.received],
        "stats": (stats.base_seq, stats.max_seq, stats.cycles, stats.packets_received, stats.packets_lost),
        "jitter_set": stats._jitter_q4 > 0,
        "missing": set(nack.missing),
        "nack_max": nack.max_seq,
        "express": COUNTERS.packets_express - express,
    }


async def test_the_lane_does_what_the_door_does_with_a_pulled_stream(pull: Pull) -> None:
    through_lane = await run(pull, through_lane=True)
    pull.received.clear()
    through_door = await run(pull, through_lane=False)
    # Byte for byte the same stream at the viewer, in the order sent, the late packet in its place.
    assert through_lane["received"] == through_door["received"]
    assert len(through_lane["received"]) == 60
    assert through_lane["stats"] == through_door["stats"] == (0, 59, 0, 60, 0)
    assert through_lane["missing"] == through_door["missing"] == set()
    assert through_lane["nack_max"] == through_door["nack_max"] == 59
    assert through_lane["jitter_set"] and through_door["jitter_set"]
    # The lane took every packet that was the next of its stream with none
    # missing: 1-29 (0 armed it, through the door) and 40-59 (31-39 came
    # with 30 missing, 30 late); the door took none of its own.
    assert through_lane["express"] == (29 + 20 if pull.compiled else 0)
    assert through_door["express"] == 0


async def test_the_lane_leaves_other_datagrams_to_the_door(pull: Pull) -> None:
    one = send(pull, through_lane=True)
    receiver = pull.pc.getTransceivers()[0].receiver
    pair = receiver.transport.transport._connection._nominated[1]
    entries = getattr(asyncio.get_running_loop(), reader._READER).sockets.values()
    # The reader hands the socket's datagrams to the protocol's own lane.
    assert [handler for _, handler in entries] == [getattr(pair.protocol, door._LANE)]
    refused, express, received = COUNTERS.datagrams_refused, COUNTERS.packets_express, COUNTERS.packets_received
    for seq in range(10):
        one(seq, KEYFRAME if seq == 0 else DELTA)
    await until(lambda: COUNTERS.packets_received == received + 10)
    assert COUNTERS.packets_express - express == (9 if pull.compiled else 0)
    # Junk, from the peer and from a stranger: the door refuses it.
    origin = pull.upstream.getTransceivers()[0].sender.transport.transport._connection._nominated[1]
    origin.protocol.transport._sock.sendto(b"", origin.remote_addr)  # asyncio's sendto sends no empty datagram
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as stranger:
        stranger.sendto(b"\x80" * 40, origin.remote_addr)
        await until(lambda: COUNTERS.datagrams_refused == refused + 2)
    # A packet whose SRTP tag is wrong is dropped, as aiortc drops it; the stream goes on.
    srtp = pull.upstream.getTransceivers()[0].sender.transport._tx_srtp
    packet = RtpPacket(payload_type=one.payload_type, sequence_number=10, timestamp=30000, ssrc=one.ssrc, payload=DELTA)
    forged = bytearray(srtp.protect(packet.serialize()))
    forged[-1] ^= 0xFF
    sender(pull, through_lane=True)(bytes(forged))
    one(10, DELTA)
    await until(lambda: len(pull.received) == 11)
    assert COUNTERS.packets_received == received + 11
    assert COUNTERS.packets_express - express == (10 if pull.compiled else 0)


class Spy:
    """A sink of the source that keeps every packet it is handed, as parsed."""

    def __init__(self) -> None:
        self.packets: list[dict[str, Any]] = []

    def push(self, packet: RtpPacket, shared: object) -> None:
        values = dict(vars(packet))
        values["extensions"] = dataclasses.asdict(packet.extensions)
        self.packets.append(values)

    def close(self) -> None:
        pass


EXTENSIONS = {
    "urn:ietf:params:rtp-hdrext:sdes:mid": 1,  # as negotiated
    "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id": 3,
    "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id": 4,
    "urn:ietf:params:rtp-hdrext:toffset": 5,
    "urn:ietf:params:rtp-hdrext:ssrc-audio-level": 6,
    "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01": 7,
    "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time": 8,
}


async def test_the_lane_reads_header_extensions_as_aiortc_does_and_leaves_it_the_rest(pull: Pull) -> None:
    from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters, RTCRtpParameters

    receiver = pull.pc.getTransceivers()[0].receiver
    extensions = receiver.transport._rtp_header_extensions_map
    extensions.configure(
        RTCRtpParameters(headerExtensions=[RTCRtpHeaderExtensionParameters(id=i, uri=u) for u, i in EXTENSIONS.items()])
    )
    source = receiver._hub_take_rtp.__self__
    spy = Spy()
    source.sinks.add(spy)

    def elements(seq: int) -> bytes:
        """One-byte extension elements (RFC 8285), a different mix per packet."""
        mix = [
            (1, b"0"),
            (3, b"h"),
            (4, b"q"),
            (5, bytes([0xFF, 0xFF, 0xF0 | seq % 16])),  # a negative transmission offset
            (6, bytes([0x80 | seq % 128])),
            (7, bytes([seq >> 8, seq & 0xFF])),
            (9, b"unknown"),
        ]
        chosen = [mix[0]] + [mix[i] for i in range(1, len(mix)) if seq >> (i - 1) & 1]
        block = b"".join(bytes([(x_id << 4) | (len(v) - 1)]) + v for x_id, v in chosen)
        if seq % 5 == 0:
            block = b"\x00" + block  # a padding byte between elements
        return block + b"\x00" * (-len(block) % 4)

    async def run(through_lane: bool) -> tuple[list[dict[str, Any]], int]:
        spy.packets.clear()
        express = COUNTERS.packets_express
        one = send(pull, through_lane)
        srtp = pull.upstream.getTransceivers()[0].sender.transport._tx_srtp
        put = sender(pull, through_lane)
        for seq in range(1, 80):
            packet = RtpPacket(payload_type=one.payload_type, sequence_number=seq, timestamp=seq * 3000, ssrc=one.ssrc)
            packet.payload = DELTA
            header = bytearray(packet.serialize())
            block, profile = elements(seq), 0xBEDE
            if seq == 40:  # a two-byte header block (mid "0"): aiortc's to read
                block, profile = b"\x01\x01\x30\x00", 0x1000
            if seq == 50:
                block = b""
            if seq == 60:  # abs-send-time: the bitrate estimator's, Python's
                block = bytes([0x82, 1, 2, 3])
            plain = bytes([header[0] | 0x10]) + bytes(header[1:12])
            plain += profile.to_bytes(2, "big") + (len(block) // 4).to_bytes(2, "big") + block
            if seq == 70:  # a padding-only probe
                plain = bytes([plain[0] | 0x20]) + plain[1 : 16 + len(block)] + b"\x00\x00\x00\x04"
            else:
                plain += DELTA
            put(srtp.protect(plain))
            await asyncio.sleep(0.002)
        return [{k: v for k, v in p.items() if k != "ssrc"} for p in spy.packets], COUNTERS.packets_express - express

    through_lane, taken = await run(True)
    through_door, by_door = await run(False)
    assert through_lane == through_door
    assert sorted(set(range(1, 80)) - {p["sequence_number"] for p in through_lane}) == [70]  # the probe
    assert {p["extensions"]["mid"] for p in through_lane if p["sequence_number"] not in (50, 60)} == {"0"}
    assert {p["extensions"]["abs_send_time"] for p in through_lane} == {None, 0x010203}
    assert len({p["extensions"]["audio_level"] for p in through_lane}) > 10
    assert {p["extensions"]["transmission_offset"] for p in through_lane} <= set(range(-16, 0)) | {None}
    # 2-69 but the two-byte block and abs-send-time (1 armed the lane); none
    # by the door. Not the probe, nor what follows it: `TrackSource.receive`
    # returns before the NACK generator sees a probe, so the next packet
    # leaves its number missing, and while a number is missing the stream
    # is Python's.
    assert (taken, by_door) == ((66, 0) if pull.compiled else (0, 0))
