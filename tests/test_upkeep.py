"""A viewer's periodic upkeep on one shared timer (hub.media.upkeep): the
temporal filters' and layer switches' ticks, the sender reports and ICE
consent checks of every viewer wake the hub once a tick, not once each."""

from __future__ import annotations

import asyncio

import aioice.ice
import pytest
from aioice import stun
from aioice.ice import StunProtocol
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.rtp import AnyRtcpPacket, RtcpPsfbPacket, RtcpRrPacket

from bench.receive import LocalUpstream
from client import bot
from hub.media import forward, ice, reader
from hub.media.router import Router
from hub.media.temporal import TemporalFilter
from hub.media.upkeep import Ticker, ticker

from .conftest import wait_until
from .peers import in_process, publish_and_view


async def test_one_tick_runs_every_due_callback_and_sleep_together() -> None:
    loop = asyncio.get_running_loop()
    clock = Ticker(loop, period=0.05)
    calls: list[tuple[str, int]] = []  # (who, during which tick)
    times: list[float] = []
    periodic = [clock.every(lambda name=name: calls.append((name, clock.ticks))) for name in "abc"]
    periodic.append(clock.every(lambda: times.append(loop.time())))

    async def sleeper(name: str, delay: float) -> None:
        await clock.sleep(delay)
        calls.append((name, clock.ticks))

    cancelled = asyncio.ensure_future(sleeper("cancelled", 0.07))
    await asyncio.sleep(0)
    cancelled.cancel()
    await asyncio.gather(sleeper("x", 0.01), sleeper("y", 0.07), sleeper("z", 0.12))
    for p in periodic:
        p.cancel()
    await asyncio.sleep(0.15)

    ticks = sorted({tick for name, tick in calls if name in "abc"})
    assert len(ticks) >= 2 and ticks == list(range(1, len(ticks) + 1))
    # Each tick ran all three callbacks: one wake-up of the timer for all.
    for tick in ticks:
        assert sorted(name for name, at in calls if at == tick and name in "abc") == ["a", "b", "c"]
    # No more wake-ups than the grid has points (a busy machine may make one late, never more).
    assert len(times) <= (times[-1] - times[0]) / 0.05 + 1.5
    # A sleep ends at a tick (the first after its delay), woken with that tick's callbacks.
    woken = {name: tick for name, tick in calls if name in "xyz"}
    assert set(woken) == {"x", "y", "z"}
    assert set(woken.values()) <= set(ticks)
    assert woken["x"] < woken["y"] < woken["z"]
    assert all(name != "cancelled" for name, _ in calls)
    # Nothing left to wait for: the timer is off, no wake-up for nobody.
    assert clock._handle is None


async def test_a_failing_callback_does_not_stop_the_others() -> None:
    clock = Ticker(asyncio.get_running_loop(), period=0.02)
    seen: list[int] = []

    def fails() -> None:
        raise RuntimeError("one viewer's bug")

    clock.every(fails)
    clock.every(lambda: seen.append(1))
    await wait_until(lambda: len(seen) >= 3, timeout=5, step=0.01)


async def _view(router: Router, stream: str) -> tuple[RTCPeerConnection, str]:
    viewer = RTCPeerConnection(bot.NO_ICE_SERVERS)
    viewer.addTransceiver("video", direction="recvonly")
    await viewer.setLocalDescription(await viewer.createOffer())
    subscription, answer = await router.view(stream, viewer.localDescription.sdp, "viewer")
    await viewer.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
    return viewer, subscription.id


async def test_viewers_filters_reports_and_consent_run_on_the_shared_tick() -> None:
    router, _, publisher, first = in_process()
    await first.close()
    viewers: list[RTCPeerConnection] = []
    try:
        await publisher.setLocalDescription(await publisher.createOffer())
        stream, answer = await router.publish(publisher.localDescription.sdp)
        await publisher.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        ids = []
        for _ in range(3):
            viewer, subscription = await _view(router, stream.id)
            viewers.append(viewer)
            ids.append(subscription)
        consumers = [router._consumers[i] for i in ids]
        filters = [c.temporal for c in consumers]
        assert all(isinstance(f, TemporalFilter) for f in filters)
        decided = [0, 0, 0]
        for index, temporal in enumerate(filters):
            assert temporal is not None
            decide = temporal.decide

            def counted(*args: object, _decide=decide, _index=index) -> bool:  # type: ignore[no-untyped-def]
                decided[_index] += 1
                return _decide(*args)

            temporal.decide = counted  # type: ignore[method-assign]
        clock = ticker()
        ticks = clock.ticks
        # Each viewer gets the hub's sender reports (its first within 1.5 s of media).
        receivers = [v.getReceivers()[0] for v in viewers]

        async def reported() -> list[int]:
            sent = []
            for receiver in receivers:
                stats = (await receiver.getStats()).values()
                sent.append(max((r.packetsSent for r in stats if r.type == "remote-outbound-rtp"), default=0))
            return sent

        deadline = asyncio.get_running_loop().time() + 20
        while not all(await reported()):
            assert asyncio.get_running_loop().time() < deadline, "a viewer got no sender report"
            await asyncio.sleep(0.2)
        await asyncio.sleep(1.2)
        # Every filter re-decided at every tick of the one timer.
        assert clock.ticks - ticks >= 3
        assert all(n >= clock.ticks - ticks - 1 for n in decided), (decided, clock.ticks - ticks)
        # No viewer keeps a timer of its own for its filter or reports.
        loop = asyncio.get_running_loop()
        own = [
            h
            for h in loop._scheduled  # type: ignore[attr-defined]
            if not h.cancelled() and getattr(h._callback, "__self__", None) in filters
        ]
        assert own == []
        # The hub's consent loops are the shared tick's.
        for consumer in consumers:
            connection = consumer.pc.getTransceivers()[0].sender.transport.transport._connection
            task = connection._query_consent_task
            assert task is not None and task.get_coro().cr_code is ice.query_consent.__code__
    finally:
        for viewer in viewers:
            await viewer.close()
        await publisher.close()
        await router.close()


async def test_a_viewer_that_stops_answering_consent_is_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    """RFC 7675 on the shared tick: six consent checks unanswered end the viewer's session."""
    monkeypatch.setattr(aioice.ice, "CONSENT_INTERVAL", 0.5)
    router, _, publisher, viewer = in_process()
    try:
        _, subscription = await publish_and_view(router, publisher, viewer)
        await wait_until(lambda: router._consumers[subscription.id].pc.connectionState == "connected", timeout=20)
        await asyncio.sleep(1.5)
        assert subscription.id in router._consumers  # answered consent keeps it
        # The viewer's host goes silent: its sockets take nothing in any more.
        connection = viewer.getTransceivers()[0].receiver.transport.transport._connection
        for protocol in connection._protocols:
            assert isinstance(protocol, StunProtocol)
            protocol.datagram_received = lambda data, addr: None  # type: ignore[method-assign]
        await wait_until(lambda: subscription.id not in router._consumers, timeout=40, step=0.2)
    finally:
        await viewer.close()
        await publisher.close()
        await router.close()


@pytest.mark.parametrize(
    "address",
    [("127.0.0.1", 5000), ("192.168.1.254", 65535), ("::1", 1), ("2001:db8::8:800:200c:417a", 3478), ("fe80::1%lo", 9)],
)
def test_stun_address_packing_is_aioices(address: tuple[str, int]) -> None:
    """The cheap packing (hub.media.ice) makes the bytes aioice's own makes, XORed or not."""
    ice.install()  # as the Router does: aioice's serialization then uses it
    transaction_id = bytes(range(7, 19))
    ours = ice.pack_address(address, lambda data: ice.xor_data(data, transaction_id))
    assert ours == ice._aioice_pack_address(address, lambda data: ice._aioice_xor_data(data, transaction_id))
    assert ice.pack_address(address) == ice._aioice_pack_address(address)
    # A whole response, as aioice serializes it, unpacks to the address it carries.
    message = stun.Message(stun.Method.BINDING, stun.Class.RESPONSE, transaction_id=transaction_id)
    message.attributes["XOR-MAPPED-ADDRESS"] = address
    message.add_message_integrity(b"password")
    parsed = stun.parse_message(bytes(message))
    assert parsed.check_message_integrity(b"password")
    assert parsed.attributes["XOR-MAPPED-ADDRESS"] == (address[0].split("%")[0], address[1])


def test_stun_packing_of_no_address_fails_as_aioices() -> None:
    with pytest.raises(ValueError):
        ice.pack_address(("not an address", 1))


async def test_a_viewers_remb_reaches_its_filter_straight_from_the_socket() -> None:
    """The door hands a REMB to the hub's callbacks (hub.media.door.on_remb), not through
    aiortc's routing and handler chain; receiver reports still take aiortc's handler."""
    router, _, publisher, viewer = in_process()
    try:
        _, subscription = await publish_and_view(router, publisher, viewer)
        consumer = router._consumers[subscription.id]
        temporal, sender = consumer.temporal, consumer.pc.getTransceivers()[0].sender
        assert temporal is not None
        handled: list[object] = []
        handle = sender._handle_rtcp_packet

        async def recorded(packet: AnyRtcpPacket) -> None:
            handled.append(packet)
            await handle(packet)

        sender._handle_rtcp_packet = recorded  # type: ignore[method-assign]
        temporal.estimate = None  # set again by the next REMB
        # aiortc's own handler, underneath, still sees the viewer's reports (its RTT and stats).
        await wait_until(lambda: temporal.estimate and any(isinstance(p, RtcpRrPacket) for p in handled), 30)
        assert not [p for p in handled if isinstance(p, RtcpPsfbPacket)]
    finally:
        await viewer.close()
        await publisher.close()
        await router.close()


async def test_a_relay_pull_s_receiver_reports_come_at_the_viewers_pace_on_the_shared_tick(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # aiortc's receiver reports once a second on a timer of its own; a pull's
    # (hub.media.relay) come every REPORT_INTERVAL, here shortened, at ticks.
    monkeypatch.setattr(forward, "REPORT_INTERVAL", 3.0)
    ice.use_addresses(["127.0.0.1"])
    origin, _, publisher, viewer = in_process()
    relay = Router(None, 1 << 20, keyframe_interval=1.0, ice_servers=[], connect_timeout=10.0, relay_linger=3600)
    loop = asyncio.get_running_loop()
    try:
        stream, viewing = await publish_and_view(origin, publisher, viewer)
        await relay.pull(stream.id, ["video"], lambda: LocalUpstream(origin, stream.id))
        pull = relay._producers[stream.id].pc
        upstream = next(c.pc for c in origin._producers[stream.id].consumers if c.id != viewing.id)
        sender = next(t.sender for t in upstream.getTransceivers() if t.kind == "video")
        pulled = next(t.receiver for t in pull.getTransceivers() if t.kind == "video")
        clock = ticker()
        reports: list[tuple[float, int]] = []  # (when, tick)
        handle = sender._handle_rtcp_packet

        async def seen(packet: AnyRtcpPacket) -> None:
            if isinstance(packet, RtcpRrPacket):
                reports.append((loop.time(), clock.ticks))
                # What aiortc's loop would have said: the stream's highest sequence number.
                streams = pulled._RTCRtpReceiver__remote_streams  # type: ignore[attr-defined]
                assert [r.ssrc for r in packet.reports] == list(streams)
                assert packet.reports[0].highest_sequence <= next(iter(streams.values())).max_seq
            await handle(packet)

        sender._handle_rtcp_packet = seen  # type: ignore[method-assign]
        await wait_until(lambda: len(reports) >= 3, timeout=30)
        gaps = [b[0] - a[0] for a, b in zip(reports, reports[1:], strict=False)]
        # [0.5, 1.5] of it, randomized, each at a tick: aiortc's come 0.5-1.5 s apart.
        assert all(1.45 <= gap <= 5.1 for gap in gaps), gaps
        assert len({tick for _, tick in reports}) == len(reports)
    finally:
        await viewer.close()
        await publisher.close()
        await relay.close()
        await origin.close()
        await wait_until(lambda: not reader.watched(asyncio.get_running_loop()), timeout=10)
