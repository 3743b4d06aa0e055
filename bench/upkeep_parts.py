"""Where a viewer's upkeep goes, piece by piece, in one process.

A Router, a publisher and one aiortc viewer in this process (real peers over
loopback). The viewer's real RTCP datagrams (receiver reports, REMB) are
captured as the hub decrypts them, then each piece of the hub's handling is
timed on its own (thread CPU, best of 5 rounds of 2,000), for a receiver
report (RR) and a REMB datagram (an aiortc viewer sends them apart):

* `unprotect`: SRTCP decryption (pylibsrtp, a session of the same profile);
* `parse`: `RtcpPacket.parse` of the compound;
* `routing and handlers, aiortc's way`: aiortc's routing and the recipients'
  handlers (aiortc's sender handler and the hub's wrappers: the temporal
  filter's REMB and loss);
* `aiortc's sender handler alone`, for comparison;
* `door, whole`: the socket callback (`StunProtocol.datagram_received` as
  the door wraps it) for a freshly protected datagram: all of the above;
* `consent answered`: a consent request as the viewer sends it, through
  the same callback, answered by aioice (integrity check, response, sendto);
* `consent check built`: what the hub does to send one of its own checks
  (request, integrity, bytes);
* `sender report`: one SR + SDES built, protected and sent;
* `filter tick`: one temporal filter's periodic decision.

    .venv/bin/python -m bench.upkeep_parts
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.rtcrtpsender import RTCRtpSender
from aiortc.rtp import RtcpPacket, RtcpPsfbPacket, RtcpRrPacket
from pylibsrtp import Policy, Session

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.machine import machine  # noqa: E402
from client import bot  # noqa: E402
from hub.media import door  # noqa: E402
from hub.media.ice import use_addresses  # noqa: E402
from hub.media.router import Router  # noqa: E402

COUNT = 2000
ROUNDS = 5


def best(work: Callable[[int], None]) -> float:
    """µs of this thread's CPU per call of `work(i)`, best of the rounds."""
    times = []
    for _ in range(ROUNDS):
        t0 = time.thread_time()
        for i in range(COUNT):
            work(i)
        times.append((time.thread_time() - t0) / COUNT * 1e6)
    return min(times)


class Capture:
    """The hub's SRTCP session, keeping what it decrypts."""

    def __init__(self, session: Any) -> None:
        self.session = session
        self.plain: list[bytes] = []

    def unprotect(self, data: bytes) -> bytes:
        return self.session.unprotect(data)

    def unprotect_rtcp(self, data: bytes) -> bytes:
        plain = self.session.unprotect_rtcp(data)
        self.plain.append(plain)
        return plain


def rtcp_pieces(sender: RTCRtpSender, plain: bytes, tx: Session, rx: Session) -> dict[str, float]:
    """One captured RTCP datagram's handling, piece by piece."""
    dtls = sender.transport
    parsed = RtcpPacket.parse(plain)
    protected = [tx.protect_rtcp(plain) for _ in range(COUNT * ROUNDS)]
    index = iter(range(COUNT * ROUNDS))
    figures = {"unprotect": best(lambda i: rx.unprotect_rtcp(protected[next(index)]))}
    figures["parse"] = best(lambda i: RtcpPacket.parse(plain))
    route = dtls._rtp_router.route_rtcp

    def handlers(i: int) -> None:
        for packet in parsed:
            for recipient in route(packet):
                door._run_eagerly(recipient._handle_rtcp_packet(packet), None)

    figures["routing and handlers, aiortc's way"] = best(handlers)

    def aiortc_only(i: int) -> None:
        for packet in parsed:
            door._run_eagerly(RTCRtpSender._handle_rtcp_packet(sender, packet), None)

    figures["aiortc's sender handler alone"] = best(aiortc_only)
    # The whole socket callback, on a session of our own keys for the hub's side.
    pair = dtls.transport._connection._nominated[1]
    hub_rx = dtls._rx_srtp
    dtls._rx_srtp = rx
    fresh = [tx.protect_rtcp(plain) for _ in range(COUNT * ROUNDS)]
    index = iter(range(COUNT * ROUNDS))
    try:
        figures["door, whole"] = best(lambda i: pair.protocol.datagram_received(fresh[next(index)], pair.remote_addr))
    finally:
        dtls._rx_srtp = hub_rx
    return figures


async def run() -> dict[str, float]:
    use_addresses(["127.0.0.1"])
    router = Router(None, max_backlog=1 << 20, keyframe_interval=0.5, ice_servers=[], connect_timeout=10.0)
    video = bot.SyntheticVideo("vp8", 640, 480, 30)
    publisher = RTCPeerConnection(bot.NO_ICE_SERVERS)
    publisher.addTransceiver(video, direction="sendonly")
    viewer = RTCPeerConnection(bot.NO_ICE_SERVERS)
    viewer.addTransceiver("video", direction="recvonly")
    try:
        await publisher.setLocalDescription(await publisher.createOffer())
        stream, answer = await router.publish(publisher.localDescription.sdp)
        await publisher.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        await viewer.setLocalDescription(await viewer.createOffer())
        subscription, answer = await router.view(stream.id, viewer.localDescription.sdp, "viewer")
        await viewer.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        consumer = router._consumers[subscription.id]
        sender = consumer.pc.getTransceivers()[0].sender
        dtls = sender.transport
        while dtls._rx_srtp is None or consumer.pc.connectionState != "connected":
            await asyncio.sleep(0.1)
        capture = Capture(dtls._rx_srtp)
        dtls._rx_srtp = capture
        deadline = time.monotonic() + 30
        while not {"RR", "REMB"} <= {_kinds(p) for p in capture.plain} and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        dtls._rx_srtp = capture.session
        kinds = [_kinds(p) for p in capture.plain]
        figures: dict[str, float] = {f"captured {k}": kinds.count(k) for k in sorted(set(kinds))}

        # The profile aiortc negotiates (AES-256-GCM: a 32-byte key and a 12-byte salt).
        key, profile = bytes(range(44)), Policy.SRTP_PROFILE_AEAD_AES_256_GCM
        tx = Session(Policy(key=key, ssrc_type=Policy.SSRC_ANY_OUTBOUND, srtp_profile=profile))
        rx = Session(Policy(key=key, ssrc_type=Policy.SSRC_ANY_INBOUND, srtp_profile=profile))
        for kind in ("RR", "REMB"):
            plain = next(p for p, k in zip(capture.plain, kinds, strict=True) if k == kind)
            figures |= {f"{kind}: {name}": value for name, value in rtcp_pieces(sender, plain, tx, rx).items()}
        connection = dtls.transport._connection
        pair = connection._nominated[1]
        protocol, addr = pair.protocol, pair.remote_addr

        # A consent request as the viewer sends it, answered by the hub.
        peer = viewer.getTransceivers()[0].receiver.transport.transport._connection
        peer_pair = peer._nominated[1]

        def consent_request() -> bytes:
            request = peer.build_request(peer_pair, nominate=False)
            request.add_message_integrity(peer.remote_password.encode("utf8"))
            return bytes(request)

        requests = [consent_request() for _ in range(COUNT * ROUNDS)]
        index = iter(range(COUNT * ROUNDS))
        figures["consent answered"] = best(lambda i: protocol.datagram_received(requests[next(index)], addr))

        def consent_check(i: int) -> None:
            request = connection.build_request(pair, nominate=False)
            request.add_message_integrity(connection.remote_password.encode("utf8"))
            bytes(request)

        figures["consent check built"] = best(consent_check)
        sink = consumer.sinks["video"]
        figures["sender report"] = best(lambda i: door._run_eagerly(sender._send_rtcp(sink._sender_report()), None))
        temporal = consumer.temporal
        assert temporal is not None
        figures["filter tick"] = best(lambda i: temporal._tick())
        return figures
    finally:
        await viewer.close()
        await publisher.close()
        await router.close()


def _kinds(plain: bytes) -> str:
    try:
        packets = RtcpPacket.parse(plain)
    except ValueError:
        return "?"
    names = []
    for p in packets:
        remb = isinstance(p, RtcpPsfbPacket) and p.fmt == 15
        names.append("RR" if isinstance(p, RtcpRrPacket) else "REMB" if remb else type(p).__name__)
    return "+".join(names)


def main() -> int:
    info = machine()
    figures = asyncio.run(run())
    print(f"Machine: {info['cpu']}; {info['date']}; load average at start {info['load_average_at_start']}")
    print("| piece | µs per call |")
    print("| --- | ---: |")
    for name, value in figures.items():
        print(f"| {name} | {value:.1f} |" if isinstance(value, float) else f"| {name} | {value} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
