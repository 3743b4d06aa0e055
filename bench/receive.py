"""What receiving one RTP packet costs a hub: a publisher's and a relay's pull.

In this process: a Router with one aiortc publisher (WHIP's path) and a
second Router pulling that stream from the first (a relay's WHEP pull,
`Router.pull`), all on 127.0.0.1. The bench then makes SRTP packets as the
far end of each session would (its own SRTP keys, a fresh SSRC, the
negotiated payload type, 1,100-byte payloads, no header extensions) and
hands each to the hub-side ICE socket's `datagram_received`, one per turn
of the event loop, as datagrams arrive; a packet counts as received once its
`TrackSource` has it (no sinks: the fan-out is not measured here). CPU
(process time) per packet, less the same loop with no packet in it, is the
receive path's cost: the door's direct path (hub.media.door.take_rtp), with
SRTP unprotect and the RTP parse compiled (hub/media/_fastrecv.c) and with
pylibsrtp and aiortc's parse (the compiled module switched off for the run),
and, for comparison, aiortc's own path through aioice's queue (the direct
path switched off for the run by removing the receiver's handler); for the
pull, also through the door's express lane (the datagrams handed to the
socket's `_fastrecv.Lane`, as hub.media.reader's thread hands them, the
compiled send path on as in the hub).

    .venv/bin/python -m bench.receive            # about 20 s
    .venv/bin/python -m bench.receive --packets 5000
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from aiortc import RTCPeerConnection, RTCSessionDescription  # noqa: E402
from aiortc.rtcrtpreceiver import RTCRtpReceiver  # noqa: E402
from aiortc.rtp import RtpPacket  # noqa: E402

from bench.machine import machine  # noqa: E402
from client.bot import NO_ICE_SERVERS  # noqa: E402
from hub.media import door  # noqa: E402
from hub.media.counters import COUNTERS  # noqa: E402
from hub.media.forward import use_path  # noqa: E402
from hub.media.ice import use_addresses  # noqa: E402
from hub.media.router import Producer, Router  # noqa: E402

PAYLOAD = bytes(1100)
#: The receive paths measured, as the report names them.
PATHS = {
    "lane": "the door's express lane, the whole path in C (hub.media.door.lane; a pull's socket only)",
    "compiled": "the door's direct path, compiled unprotect + parse (hub/media/_fastrecv.c)",
    "direct": "the door's direct path, pylibsrtp + aiortc's parse",
    "aiortc": "aiortc's (aioice queue, DTLS task)",
}
#: A fresh SSRC per run: SRTP refuses a sequence number it has seen.
_ssrcs = iter(range(0x5EED0000, 0x5EEDFFFF))


class LocalUpstream:
    """The pulled-from hub, in this process: its Router answers the pull's offer."""

    def __init__(self, router: Router, stream_id: str) -> None:
        self.router, self.stream_id = router, stream_id

    async def exchange(self, offer: str) -> str:
        _, answer = await self.router.view(self.stream_id, offer, "relay")
        return answer

    async def close(self) -> None:
        pass


def receiver_of(pc: RTCPeerConnection) -> RTCRtpReceiver:
    return next(t.receiver for t in pc.getTransceivers() if t.kind == "video")


async def per_packet(
    producers: list[Producer], hub_pc: RTCPeerConnection, far_pc: RTCPeerConnection, packets: int, path: str
) -> float:
    """µs of CPU per packet received by `hub_pc`, sent as `far_pc` would."""
    receiver = receiver_of(hub_pc)
    connection = receiver.transport.transport._connection
    pair = connection._nominated[1]
    protocol, addr = pair.protocol, pair.remote_addr
    handler = getattr(protocol, door._LANE) if path == "lane" else protocol
    srtp = next(t.sender for t in far_pc.getTransceivers() if t.kind == "video").transport._tx_srtp
    payload_type = next(iter(receiver._RTCRtpReceiver__codecs))  # type: ignore[attr-defined]
    ssrc = next(_ssrcs)
    datagrams = [
        srtp.protect(
            RtpPacket(
                payload_type=payload_type, sequence_number=i & 0xFFFF, timestamp=i * 3000, ssrc=ssrc, payload=PAYLOAD
            ).serialize()
        )
        for i in range(packets)
    ]
    # The origin's publisher feeds the pull: detached, so that only this session receives.
    source = next(p for p in producers if p.pc is hub_pc).sources["video"]
    sinks = set(source.sinks)
    source.sinks.clear()
    taken, compiled = getattr(receiver, door._HANDLER), door._fastrecv
    direct = path != "aiortc"
    if not direct:
        delattr(receiver, door._HANDLER)
    if path not in ("compiled", "lane"):
        door._fastrecv = None
    try:
        # The loop alone: one turn per datagram, as when nothing arrives.
        start = time.process_time()
        for _ in range(packets):
            await asyncio.sleep(0)
        empty = time.process_time() - start
        start, counted, express = time.process_time(), COUNTERS.packets_received, COUNTERS.packets_express
        for i, datagram in enumerate(datagrams, 1):
            handler.datagram_received(datagram, addr)
            while COUNTERS.packets_received < counted + i:
                await asyncio.sleep(0)
            if direct:
                await asyncio.sleep(0)
        spent = time.process_time() - start
    finally:
        setattr(receiver, door._HANDLER, taken)
        door._fastrecv = compiled
        source.sinks |= sinks
    if COUNTERS.packets_received != counted + packets:
        raise SystemExit("packets went missing: the measurement is void")
    if path == "lane" and COUNTERS.packets_express < express + packets - 1:  # the first arms it
        raise SystemExit("the lane left packets to the door: the measurement is void")
    return 1e6 * (spent - empty) / packets


async def connect(pc: RTCPeerConnection, answer: object) -> None:
    await pc.setLocalDescription(await pc.createOffer())
    sdp = await answer(pc.localDescription.sdp)  # type: ignore[operator]
    await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))


async def connected(*pcs: RTCPeerConnection) -> None:
    for _ in range(200):
        if all(pc.connectionState == "connected" for pc in pcs):
            await asyncio.sleep(0.5)  # DTLS's receive tasks are running
            return
        await asyncio.sleep(0.05)
    raise SystemExit("the sessions did not connect")


async def run(packets: int, rounds: int) -> None:
    use_addresses(["127.0.0.1"])
    use_path("c")  # as the hub runs: the lane takes a source's packets only on the compiled send path
    origin = Router(None, max_backlog=1 << 20, keyframe_interval=1.0, ice_servers=[], connect_timeout=10.0)
    # No viewer keeps the pull: it must not linger out while measured.
    relay = Router(None, 1 << 20, keyframe_interval=1.0, ice_servers=[], connect_timeout=10.0, relay_linger=3600)
    publisher = RTCPeerConnection(NO_ICE_SERVERS)
    publisher.addTransceiver("video", direction="sendonly")  # no track: it sends nothing of its own
    media: list[str] = []

    async def publish(offer: str) -> str:
        stream, answer = await origin.publish(offer)
        media.append(stream.id)
        return answer

    try:
        await connect(publisher, publish)
        hosted = origin._producers[media[0]]
        await relay.pull(media[0], ["video"], lambda: LocalUpstream(origin, media[0]))
        pull = relay._producers[media[0]]
        upstream_pc = next(iter(hosted.consumers)).pc
        assert hosted.pc is not None and pull.pc is not None
        await connected(publisher, hosted.pc, pull.pc, upstream_pc)
        results: dict[tuple[str, str], list[float]] = {}
        for _ in range(rounds):
            for path in [p for p in PATHS if p not in ("compiled", "lane") or door._fastrecv is not None]:
                for name, hub_pc, far_pc in (("publisher", hosted.pc, publisher), ("pull", pull.pc, upstream_pc)):
                    if path == "lane" and name != "pull":
                        continue
                    results.setdefault((name, path), []).append(
                        await per_packet([hosted, pull], hub_pc, far_pc, packets, path)
                    )
    finally:
        await publisher.close()
        await relay.close()
        await origin.close()

    info = machine()
    print(
        f"Machine: {info['cpu']}, {info['cores']} cores; Python {info['python']}, aiortc {info['aiortc']};"
        f" {info['date']}; load average at start {info['load_average_at_start']}"
    )
    print(f"{packets} packets of 1,100 bytes per run, {rounds} runs each, median shown (all runs in brackets)\n")
    print("| session | receive path | µs CPU per packet |")
    print("| --- | --- | ---: |")
    for (name, path), values in results.items():
        runs = ", ".join(f"{v:.1f}" for v in values)
        print(f"| {name} | {PATHS[path]} | {sorted(values)[len(values) // 2]:.1f} ({runs}) |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--packets", type=int, default=10000, help="packets per run (default 10000)")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each kind (default 3)")
    args = parser.parse_args()
    asyncio.run(run(args.packets, args.rounds))


if __name__ == "__main__":
    main()
