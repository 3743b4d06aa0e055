"""What one `TrackSink.push` costs: CPU microseconds per packet per viewer.

`push` runs once per forwarded packet per viewer, inside the publisher's
receive path, so its cost multiplies. Each figure is the best of several
rounds of process CPU time (the machine is shared: the best round is the one
least disturbed):

* **rewrite**: everything above the socket (sequence mapping, header,
  extensions, history) with the send replaced by nothing;
* **send**: the same plus SRTP protect (AES-CM/HMAC-SHA1) and `sendto` to a
  loopback socket whose receiver is drained by the kernel's buffer limit.

A third round drops every tenth packet (a viewer waiting for keyframes) to
show what the drop path costs. Run from the repository root:

    .venv/bin/python -m bench.sink_push --packets 20000
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from aioice.ice import StunProtocol
from aiortc import RTCCertificate, RTCDtlsTransport, RTCIceGatherer, RTCIceTransport, RTCRtpReceiver, RTCRtpSender
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RtpPacket
from pylibsrtp import Policy, Session

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.machine import machine  # noqa: E402
from hub.media.forward import Outgoing, TrackSink, TrackSource  # noqa: E402

VP8 = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=96)
PAYLOAD = b"\x10" + bytes(1100)  # a VP8 keyframe start, ~MTU sized


class BenchSink(TrackSink):
    """A sink whose route is a real SRTP session and UDP socket, fixed."""

    route: Any = None
    send = True
    drop_every = 0
    pushed = 0

    def _route(self) -> Any:
        return self.route

    def _backlog(self, route: Any) -> int:
        self.pushed += 1
        return 1 << 30 if self.drop_every and self.pushed % self.drop_every == 0 else 0

    def _send(self, data: bytes, route: Any, batch: Any = None) -> None:
        if self.send:
            super()._send(data, route)


async def measure(packets: int, rounds: int) -> dict[str, float]:
    transport = RTCDtlsTransport(RTCIceTransport(RTCIceGatherer()), [RTCCertificate.generateCertificate()])
    source = TrackSource(RTCRtpReceiver("video", transport), "video", keyframe_interval=3600)
    source.codec = VP8
    sink = BenchSink(source, RTCRtpSender("video", transport), max_backlog=1 << 20)
    task = asyncio.ensure_future(
        sink._run_rtp(RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=96))
    )
    await asyncio.sleep(0)
    sink._waiting_keyframe = False

    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    loop = asyncio.get_running_loop()
    udp, protocol = await loop.create_datagram_endpoint(
        lambda: StunProtocol(SimpleNamespace(protocol_lost=lambda protocol: None)), local_addr=("127.0.0.1", 0)
    )
    key = os.urandom(30)
    srtp = Session(
        Policy(key=key, ssrc_type=Policy.SSRC_ANY_OUTBOUND, srtp_profile=Policy.SRTP_PROFILE_AES128_CM_SHA1_80)
    )
    sink.route = (srtp, protocol, receiver.getsockname(), None)  # the Python path's send

    sent = 0

    def run(send: bool, drop_every: int) -> float:
        nonlocal sent
        sink.send, sink.drop_every = send, drop_every
        results = []
        for _ in range(rounds):
            # Fresh sequence numbers each round: SRTP refuses to protect one twice.
            batch = [
                RtpPacket(
                    payload_type=96,
                    marker=i % 5 == 4,
                    sequence_number=i & 0xFFFF,
                    timestamp=i // 5 * 3000,
                    ssrc=1,
                    payload=PAYLOAD,
                )
                for i in range(sent, sent + packets)
            ]
            sent += packets
            start = time.process_time()
            for packet in batch:
                sink.push(packet, Outgoing.now())
            results.append((time.process_time() - start) / packets * 1e6)
            sink._waiting_keyframe = False
        return min(results)

    figures = {
        "rewrite_us": run(send=False, drop_every=0),
        "send_us": run(send=True, drop_every=0),
        "rewrite_drop_1_in_10_us": run(send=False, drop_every=10),
    }
    sink.close()
    await task
    udp.close()
    receiver.close()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--packets", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    figures = asyncio.run(measure(args.packets, args.rounds))
    print(f"machine: {machine()}")
    print("| figure | µs CPU per push |\n| --- | --- |")
    for name, value in figures.items():
        print(f"| {name} | {value:.2f} |")


if __name__ == "__main__":
    main()
