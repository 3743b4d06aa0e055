"""The media door: junk datagrams at a session's ICE ports end nothing.

aiortc 1.16 ends a peer connection on one empty datagram and never checks
where a datagram came from; `hub.media.door` refuses such datagrams before
DTLS/SRTP. Real aiortc peers, real hub process, real UDP over loopback.
"""

from __future__ import annotations

import asyncio
import random
import re
import socket
import time

import aiohttp
from aioice import stun
from aioice.ice import CandidatePair
from aiortc import RTCPeerConnection, RTCSessionDescription

from client import bot
from hub.media import door
from hub.media.counters import COUNTERS
from hub.media.ice import use_addresses

from .conftest import HubProcess, wait_until
from .peers import in_process, publish_and_view, tap_rtp
from .test_seqmap import LosingSrtp

_CANDIDATE = re.compile(r"^a=candidate:\S+ \d+ udp \d+ (\S+) (\d+) typ", re.MULTILINE | re.IGNORECASE)
_STUN_BINDING = b"\x00\x01"
_COOKIE = b"\x21\x12\xa4\x42"


def ice_ports(sdp: str) -> set[tuple[str, int]]:
    """The UDP addresses a session description offers for media."""
    return {(host, int(port)) for host, port in _CANDIDATE.findall(sdp)}


def junk(rng: random.Random) -> list[bytes]:
    """Datagrams no peer sends: empty, random, and truncated or forged
    RTP, RTCP, DTLS and STUN."""
    txid = rng.randbytes(12)
    return (
        [
            b"",
            b"\x00",
            rng.randbytes(1),
            rng.randbytes(7),
            rng.randbytes(64),
            rng.randbytes(1200),
            bytes([0x80, 0x60]) + rng.randbytes(5),  # RTP header cut short
            bytes([0x80, 0x60]) + rng.randbytes(200),  # RTP-looking, not SRTP from this session
            bytes([0x80, 0xC8, 0x00]),  # RTCP sender report cut short
            bytes([0x81, 0xC9, 0x00, 0x07]) + rng.randbytes(28),  # an RTCP receiver report, unprotected
            bytes([0x16, 0xFE, 0xFD]) + rng.randbytes(4),  # DTLS record header cut short
            bytes([0x16, 0xFE, 0xFD, 0, 0, 0, 0, 0, 0, 0, 1, 0, 40]) + rng.randbytes(40),  # a handshake record of junk
            bytes([0x15, 0xFE, 0xFD, 0, 0, 0, 0, 0, 0, 0, 2, 0, 2, 2, 40]),  # a fatal alert, unauthenticated
            bytes([0x17, 0xFE, 0xFD]) + rng.randbytes(60),  # application data of junk
            _STUN_BINDING + b"\x00\x00" + _COOKIE + txid[:6],  # STUN header cut short
            _STUN_BINDING
            + b"\x00\x08"
            + _COOKIE
            + txid
            + b"\x00\x20\x00\x04\x00\x01\x00\x00",  # XOR-MAPPED-ADDRESS cut short
            _STUN_BINDING + b"\x00\x00" + _COOKIE + txid,  # a binding request with no credentials
            b"\x01\x01\x00\x00" + _COOKIE + txid,  # a binding response nobody asked for
        ]
        + [bytes([rng.randrange(256)]) + rng.randbytes(rng.randrange(40)) for _ in range(20)]
    )


def peer_socket(session: bot.Session) -> tuple[asyncio.DatagramTransport, tuple[str, int]]:
    """The client's own UDP socket of the selected candidate pair, and the hub's address on it:
    datagrams from there look like the real peer's."""
    pair = session.pc.getTransceivers()[0].receiver.transport.transport._connection._nominated[1]
    return pair.protocol.transport, pair.remote_addr


async def test_junk_at_publisher_and_viewer_ports_ends_no_session(hub: HubProcess, http: aiohttp.ClientSession):
    token = hub.sign("m-tuanjie-door", "tuanjie", "mediator")
    video, audio = bot.SyntheticVideo("vp8", 160, 120, 30), bot.SyntheticAudio()
    publisher = await bot.publish(http, hub.url, token, "site-tuanjie", [video, audio])
    viewer = await bot.view(http, hub.url, token, publisher.resource_id)
    senders = []
    try:
        await wait_until(lambda: len(viewer.logs["video"].frames) > 10, timeout=20)
        targets = ice_ports(publisher.pc.remoteDescription.sdp) | ice_ports(viewer.pc.remoteDescription.sdp)
        assert len(targets) >= 2  # the publisher's session and the viewer's
        for host in ("127.0.0.1", "127.0.0.2"):  # another port, another address
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind((host, 0))
            s.setblocking(False)
            senders.append(s)
        rng = random.Random(11)
        # From the clients' own sockets too (what a spoofed source would
        # be): only what no DTLS or SRTP could take for its own.
        spoofed = [b"", b"\x80", bytes([0x80, 0x60]) + rng.randbytes(5), bytes([0x80, 0x60]) + rng.randbytes(300)]

        counts = []
        end = time.monotonic() + 5
        while time.monotonic() < end:
            second = time.monotonic() + 1
            while time.monotonic() < second:
                for s in senders:
                    for target in targets:
                        for data in junk(rng):
                            s.sendto(data, target)
                for session in (publisher, viewer):
                    transport, hub_addr = peer_socket(session)
                    for data in spoofed:
                        transport.sendto(data, hub_addr)
                await asyncio.sleep(0.1)
            counts.append((len(viewer.logs["video"].frames), len(viewer.logs["audio"].frames)))

        # Frames kept arriving, every second, on both tracks.
        for before, after in zip(counts, counts[1:], strict=False):
            assert after[0] > before[0] and after[1] > before[1], counts
        assert publisher.pc.connectionState == "connected"
        assert viewer.pc.connectionState == "connected"
        async with http.get(f"{hub.url}/api/streams/{publisher.resource_id}", headers=bot._auth(token)) as r:
            assert r.status == 200
    finally:
        for s in senders:
            s.close()
        await viewer.close()
        await publisher.close()


async def test_door_refuses_and_counts_what_is_not_the_peers_and_lets_stun_through():
    """Two peer connections in this process, the door installed: each refused
    datagram is counted, and a STUN request from a stranger is still answered."""
    door.install()
    offerer, answerer = RTCPeerConnection(bot.NO_ICE_SERVERS), RTCPeerConnection(bot.NO_ICE_SERVERS)
    channel = offerer.createDataChannel("check")
    echoed: list[str] = []

    @answerer.on("datachannel")
    def _on_channel(remote) -> None:  # type: ignore[no-untyped-def]
        remote.on("message", echoed.append)

    stranger, asker = (socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2))
    for s in (stranger, asker):
        s.bind(("127.0.0.2", 0))
        s.settimeout(5)
    try:
        await offerer.setLocalDescription(await offerer.createOffer())
        await answerer.setRemoteDescription(offerer.localDescription)
        await answerer.setLocalDescription(await answerer.createAnswer())
        await offerer.setRemoteDescription(answerer.localDescription)
        await wait_until(lambda: answerer.connectionState == "connected" and channel.readyState == "open", timeout=20)
        (target,) = ice_ports(answerer.localDescription.sdp)

        datagrams = junk(random.Random(5))
        stun_ok = [d for d in datagrams if d[:1] in (b"\x00", b"\x01") and _parses(d)]
        refused = COUNTERS.datagrams_refused
        for data in datagrams:
            stranger.sendto(data, target)
        await wait_until(lambda: COUNTERS.datagrams_refused - refused >= len(datagrams) - len(stun_ok), timeout=5)
        await asyncio.sleep(0.2)  # nothing more is refused than that
        assert COUNTERS.datagrams_refused - refused == len(datagrams) - len(stun_ok)

        # aioice still answers STUN from an address it does not know (here:
        # an error, the request has no credentials).
        request = stun.Message(stun.Method.BINDING, stun.Class.REQUEST)
        asker.sendto(bytes(request), target)
        reply = stun.parse_message(await asyncio.get_running_loop().run_in_executor(None, asker.recv, 2048))
        assert reply.transaction_id == request.transaction_id
        assert reply.message_class == stun.Class.ERROR

        # And the session lives on: data still arrives.
        channel.send("still here")
        await wait_until(lambda: echoed == ["still here"] or answerer.connectionState != "connected", timeout=10)
        assert answerer.connectionState == "connected"
    finally:
        stranger.close()
        asker.close()
        await offerer.close()
        await answerer.close()


def _parses(data: bytes) -> bool:
    try:
        stun.parse_message(data)
    except Exception:
        return False
    return True


async def test_a_hub_receivers_rtp_skips_aiortcs_queue_and_a_plain_receivers_keeps_it():
    """A publisher's packets reach the hub's TrackSource from the socket
    directly (not through aiortc's queue and coroutines), with aiortc's
    statistics kept and a lost packet NACKed; a plain aiortc viewer in the
    same process still gets its packets through aiortc's own path."""
    router, video, publisher, viewer = in_process()
    viewer_receiver = viewer.getReceivers()[0]
    queued: dict[str, int] = {"hub": 0, "viewer": 0}

    def count(receiver, name: str) -> None:  # type: ignore[no-untyped-def]
        tap_rtp(receiver, lambda _: queued.__setitem__(name, queued[name] + 1))

    count(viewer_receiver, "viewer")
    try:
        await publisher.setLocalDescription(await publisher.createOffer())
        stream, answer = await router.publish(publisher.localDescription.sdp)
        await publisher.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        hub_pc = router._producers[stream.id].pc
        assert hub_pc is not None
        hub_receiver = hub_pc.getTransceivers()[0].receiver
        count(hub_receiver, "hub")
        nacked: list[int] = []
        send_nack = hub_receiver._send_rtcp_nack

        async def nack(media_ssrc: int, lost: list[int]) -> None:
            nacked.extend(lost)
            await send_nack(media_ssrc, lost)

        hub_receiver._send_rtcp_nack = nack  # type: ignore[method-assign]
        await viewer.setLocalDescription(await viewer.createOffer())
        _, answer = await router.view(stream.id, viewer.localDescription.sdp, "viewer")
        await viewer.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        await wait_until(lambda: queued["viewer"] > 20, timeout=30)
        # Once the session is up (a first packet may beat the receiver's registration), none takes the queue.
        early, received = queued["hub"], COUNTERS.packets_received
        await wait_until(lambda: queued["viewer"] > 60, timeout=30)
        hub_dtls = hub_receiver.transport
        assert queued["hub"] == early <= 2
        assert COUNTERS.packets_received - received > 30
        # aiortc's own bookkeeping still sees every packet (receiver reports, getStats).
        (statistics,) = hub_receiver._RTCRtpReceiver__remote_streams.values()
        assert statistics.packets_received > 40
        assert hub_dtls._RTCDtlsTransport__rx_packets >= statistics.packets_received

        # A packet lost before the hub is asked for again.
        losing = LosingSrtp(hub_dtls._rx_srtp)
        hub_dtls._rx_srtp = losing
        await wait_until(lambda: losing.lost and losing.lost[0] in nacked, timeout=10)
        assert queued["hub"] == early
    finally:
        await viewer.close()
        await publisher.close()
        await router.close()


async def test_media_from_another_pair_of_the_peer_is_taken():
    """Chromium (the controlling agent) may move its media and DTLS to another candidate pair it
    found writable before aioice has taken that pair's nomination: the door takes datagrams from any
    pair of the socket's peer (here the publisher switches sockets after an authenticated check
    from the new one), and the viewer keeps getting the stream. The door refused them once: a
    browser's session never finished its DTLS handshake, or its video stopped."""
    use_addresses(["127.0.0.1", "127.0.0.2"])  # two host candidates on each side
    router, video, publisher, viewer = in_process()
    viewer_receiver = viewer.getReceivers()[0]
    arrived: list[int] = []
    tap_rtp(viewer_receiver, lambda packet: arrived.append(packet.sequence_number))
    try:
        await publish_and_view(router, publisher, viewer)
        await wait_until(lambda: len(arrived) > 20, timeout=30)

        ice = publisher.getTransceivers()[0].sender.transport.transport._connection
        nominated = ice._nominated[1]
        other = next(p for p in ice._protocols if p is not nominated.protocol)
        switched = CandidatePair(other, nominated.remote_candidate)
        # Chromium's check of the new path: with the ICE password, not (yet) nominating it. (aioice's own
        # checks nominate every pair they try, and the hub's side would follow at once.)
        check = ice.build_request(switched, nominate=False)
        assert ice.remote_password is not None
        await other.request(check, switched.remote_addr, integrity_key=ice.remote_password.encode("utf8"))
        ice._nominated[1] = switched  # from now on the publisher sends from its other socket
        refused, before = COUNTERS.datagrams_refused, len(arrived)
        await wait_until(lambda: len(arrived) > before + 60, timeout=15)
        assert COUNTERS.datagrams_refused == refused
    finally:
        use_addresses(["127.0.0.1"])
        await viewer.close()
        await publisher.close()
        await router.close()


async def test_a_viewers_rtcp_skips_aiortcs_queue_and_still_gets_nacks_and_keyframes_answered():
    """A viewer's SRTCP (receiver reports, REMB, NACK, PLI) reaches the
    hub's sender from the socket directly, not through aiortc's queue and
    the DTLS transport's task; its NACK is still answered and its PLI still
    becomes a keyframe request to the publisher."""
    router, video, publisher, viewer = in_process()
    viewer_receiver = viewer.getReceivers()[0]
    try:
        stream, subscription = await publish_and_view(router, publisher, viewer)
        consumer = router._consumers[subscription.id]
        sink = consumer.sinks["video"]
        sender = consumer.pc.getTransceivers()[0].sender
        dtls = sender.transport
        queued: list[object] = []
        handled: list[object] = []
        through_queue = dtls._handle_rtcp_data
        handle = sender._handle_rtcp_packet

        async def queue_path(data: bytes) -> None:
            queued.append(data)
            await through_queue(data)

        async def handled_here(packet) -> None:  # type: ignore[no-untyped-def]
            handled.append(packet)
            await handle(packet)

        dtls._handle_rtcp_data = queue_path  # type: ignore[method-assign]
        sender._handle_rtcp_packet = handled_here  # type: ignore[method-assign]
        # aiortc's viewer reports about once a second (RR) and sends REMB as its estimate moves.
        await wait_until(lambda: len(handled) >= 3 and sink.stats.packets > 30, timeout=30)
        early = len(queued)
        assert early <= 1  # the first may arrive before the door knows the transport is keyed
        ssrc = sender._ssrc

        # A NACK for a packet the sink sent is answered with that packet again.
        sent = next(entry for entry in sink._history if entry is not None)
        retransmitted = COUNTERS.retransmissions
        await viewer_receiver._send_rtcp_nack(ssrc, [sent[0]])
        await wait_until(lambda: COUNTERS.retransmissions > retransmitted, timeout=10)

        # A PLI becomes a (throttled) keyframe request to the publisher.
        source = router._producers[stream.id].sources["video"]
        asked = source.keyframe_requests
        await viewer_receiver._send_rtcp_pli(ssrc)
        await wait_until(lambda: source.keyframe_requests > asked, timeout=10)
        assert len(queued) == early
        assert any(type(p).__name__ == "RtcpRtpfbPacket" for p in handled)
        assert any(type(p).__name__ == "RtcpPsfbPacket" for p in handled)
    finally:
        await viewer.close()
        await publisher.close()
        await router.close()
