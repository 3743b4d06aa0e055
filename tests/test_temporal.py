"""VP8 temporal layers: a capped viewer gets the lower layers only, decodable,
with no gap in its sequence numbers; an uncapped one gets every frame as sent;
a raised cap takes effect at a layer-sync frame; with simulcast, a viewer of
the lowest layer whose feedback shows a thin link gets its lower frame rate."""

from __future__ import annotations

import asyncio
import queue
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import av
import numpy as np
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.rtp import RTCP_PSFB_APP, AnyRtcpPacket, RtcpPsfbPacket, RtcpRrPacket, pack_remb_fci

from client import bot
from client.simulcast import LayerSpec, SimulcastVideo
from client.temporal import TemporalVideo
from hub.media.layers import Tile
from hub.media.router import Router
from hub.media.temporal import TOP, TemporalFilter, vp8_temporal

from .conftest import HubProcess, wait_until
from .peers import tap_rtp

ROOM = "site-rianxiuma"
WIDTH, HEIGHT = 320, 240


def frame_number(picture: np.ndarray) -> int:
    """The frame index `bot.pattern_image` writes into its top row as 16 blocks."""
    block = max(4, picture.shape[1] // 32)
    row = picture[block // 2]
    return sum(1 << bit for bit in range(16) if row[bit * block + block // 2] > 128)


def reference_decode(packets: list[tuple[bytes, int, bool]], cap: int) -> dict[int, np.ndarray]:
    """Decode the frames up to layer `cap` (and keyframes) on their own: frame index -> picture."""
    decoder = av.CodecContext.create("vp8", "r")
    pictures = {}
    for index, (data, tid, keyframe) in enumerate(packets):
        if tid <= cap or keyframe:
            for frame in decoder.decode(av.Packet(data)):
                pictures[index] = frame.to_ndarray(format="gray")
    return pictures


def test_each_layer_decodes_alone_to_the_same_pictures() -> None:
    """The publisher's layers are real: leaving the upper ones out changes no picture of the lower
    ones (a stream without temporal layers, thinned the same way, does)."""
    for layers in (2, 3):
        video = TemporalVideo(layers, WIDTH, HEIGHT)
        frames = video._encode()
        packets = []
        for index in range(48):
            if index == 21:
                video.request_keyframe()  # the pattern restarts at a keyframe
            packet = next(frames)
            tid, _ = video.tids[bot.frame_key(video.mime_type, bytes(packet))]
            packets.append((bytes(packet), tid, bool(packet.is_keyframe)))
        assert [tid for _, tid, _ in packets[:8]] == ([0, 1] * 4 if layers == 2 else [0, 2, 1, 2] * 2)
        assert packets[21][1] == 0 and packets[21][2]
        full = reference_decode(packets, TOP)
        assert len(full) == 48
        for cap in range(layers - 1):
            alone = reference_decode(packets, cap)
            assert len(alone) < 48 * (cap + 1) / (layers - 1) * 0.6 + 2
            for index, picture in alone.items():
                assert np.array_equal(picture, full[index]), (layers, cap, index)
    plain = bot.SyntheticVideo("vp8", WIDTH, HEIGHT, 30, frames=24)
    packets = [(bytes(p), i % 2, bool(p.is_keyframe)) for i, p in enumerate(plain._encode())]
    full, thinned = reference_decode(packets, 1), reference_decode(packets, 0)
    assert any(not np.array_equal(thinned[i], full[i]) for i in thinned)


def test_the_payload_descriptor_fields() -> None:
    # X, then I|L|T, a two-byte picture id, TL0PICIDX, then TID 2 with Y.
    assert vp8_temporal(bytes([0x90, 0xE0, 0x80 | 0x12, 0x34, 7, 0b1010_0000, 0])) == (2, True)
    assert vp8_temporal(bytes([0x90, 0xA0, 0x12, 0b0100_0000, 0])) == (1, False)  # one-byte picture id, no L
    assert vp8_temporal(bytes([0x90, 0x80, 0x12, 0])) is None  # no T bit
    assert vp8_temporal(bytes([0x10, 0])) is None  # no extension
    assert vp8_temporal(bytes([0x90, 0xE0, 0x80])) is None  # cut short


class Viewer:
    """An aiortc viewer that keeps every RTP sequence number and every
    encoded frame it receives, and decodes them with PyAV as they come."""

    def __init__(self) -> None:
        self.pc = RTCPeerConnection(bot.NO_ICE_SERVERS)
        receiver = self.pc.addTransceiver("video", direction="recvonly").receiver
        self.numbers: list[int] = []
        self.frames: list[bytes] = []
        self.pictures: list[int] = []
        self.errors: list[str] = []
        self.nacks = 0
        self._decoder = av.CodecContext.create("vp8", "r")
        tap_rtp(receiver, lambda packet: self.numbers.append(packet.sequence_number))
        send_nack = receiver._send_rtcp_nack

        async def nack(media_ssrc: int, lost: list[int]) -> None:
            self.nacks += 1
            await send_nack(media_ssrc, lost)

        receiver._send_rtcp_nack = nack  # type: ignore[method-assign]
        viewer = self

        class Frames(queue.Queue):  # type: ignore[type-arg]
            def put(self, item, block=True, timeout=None):  # type: ignore[no-untyped-def]
                if item is None:
                    super().put(item, block, timeout)  # stops aiortc's decoder thread
                else:
                    viewer._take(item[1].data)

        receiver._RTCRtpReceiver__decoder_queue = Frames()  # type: ignore[attr-defined]

    def _take(self, data: bytes) -> None:
        self.frames.append(data)
        try:
            for frame in self._decoder.decode(av.Packet(data)):
                self.pictures.append(frame_number(frame.to_ndarray(format="gray")))
        except av.FFmpegError as exc:
            self.errors.append(str(exc))


async def _connect(pc: RTCPeerConnection, answer: Callable[[str], Awaitable[str]]) -> None:
    await pc.setLocalDescription(await pc.createOffer())  # gathers all candidates: no trickle
    await pc.setRemoteDescription(RTCSessionDescription(sdp=await answer(pc.localDescription.sdp), type="answer"))


class Setup:
    """A `TemporalVideo` publisher (or `video`) and viewers through the hub's Router, in
    this process so that a test can set a viewer's temporal target."""

    def __init__(self, video: bot.Publishable | None = None) -> None:
        self.router = Router(None, max_backlog=1 << 20, keyframe_interval=0.3, ice_servers=[], connect_timeout=10.0)
        self.video = video or TemporalVideo(3, WIDTH, HEIGHT)
        self.publisher = RTCPeerConnection(bot.NO_ICE_SERVERS)
        self.video.attach(self.publisher.addTransceiver(self.video, direction="sendonly").sender)
        self.stream = ""
        self.viewers: list[tuple[Viewer, TemporalFilter]] = []

    async def publish(self) -> None:
        async def answer(offer: str) -> str:
            stream, sdp = await self.router.publish(self.video.shape_offer(offer))
            self.stream = stream.id
            return sdp

        await _connect(self.publisher, answer)

    async def view(self, target: int = TOP, tile: Tile | None = None) -> tuple[Viewer, TemporalFilter]:
        """A viewer whose temporal target is set before its first packet; of
        a simulcast stream, one whose `tile` is, and the link sets the target."""
        viewer = Viewer()
        filters: list[TemporalFilter] = []

        async def answer(offer: str) -> str:
            subscription, sdp = await self.router.view(self.stream, offer, "viewer")
            consumer = self.router._consumers[subscription.id]
            temporal = consumer.temporal
            assert temporal is not None
            if consumer.switch is not None and tile is not None:
                consumer.switch.set_tile(tile)
            else:
                assert temporal._timer is not None
                # Loopback is never congested: left alone the filter would climb
                # back to every layer; here the test, not the link, sets the target.
                temporal._timer.cancel()
                temporal.set_target(target)
            filters.append(temporal)
            return sdp

        await _connect(viewer.pc, answer)
        self.viewers.append((viewer, filters[0]))
        return viewer, filters[0]

    async def close(self) -> None:
        for viewer, _ in self.viewers:
            await viewer.pc.close()
        await self.publisher.close()
        await self.router.close()


def layers_of(video: TemporalVideo, viewer: Viewer) -> list[tuple[int, bool]]:
    return [video.tids[bot.frame_key(video.mime_type, data)] for data in viewer.frames]


def contiguous(numbers: list[int]) -> bool:
    return all((b - a) & 0xFFFF == 1 for a, b in zip(numbers, numbers[1:], strict=False))


async def test_capped_viewers_get_the_lower_layers_and_an_uncapped_one_every_frame() -> None:
    setup = Setup()
    try:
        await setup.publish()
        full, _ = await setup.view()
        half, _ = await setup.view(1)
        quarter, _ = await setup.view(0)
        await wait_until(lambda: len(full.frames) >= 150, timeout=40)
    finally:
        await setup.close()

    # The uncapped viewer: every frame as it was sent, all three layers.
    assert {tid for tid, _ in layers_of(setup.video, full)} == {0, 1, 2}
    indices = [setup.video.sent[bot.frame_key("video/vp8", data)].index for data in full.frames]
    # From its first frame on, every one sent (byte-identical: found by digest), in order.
    assert indices == sorted(indices) and len(indices) >= 0.97 * (indices[-1] - indices[0] + 1), indices
    for viewer, cap, share in ((half, 1, 0.5), (quarter, 0, 0.25)):
        tids = [tid for tid, _ in layers_of(setup.video, viewer)]
        assert tids and max(tids) <= cap, [(i, t) for i, t in enumerate(tids) if t > cap]
        assert share * 0.8 < len(viewer.frames) / len(full.frames) < share * 1.2 + 0.02, (
            len(viewer.frames),
            len(full.frames),
        )
        # No gap where frames were left out, so nothing to ask for again.
        assert contiguous(viewer.numbers), viewer.numbers
        assert viewer.nacks == 0
    for viewer in (full, half, quarter):
        # Every frame received decoded, to the picture that was sent.
        assert not viewer.errors, viewer.errors
        assert len(viewer.pictures) == len(viewer.frames)
        assert viewer.pictures == sorted(viewer.pictures)
        assert full.pictures[-1] - viewer.pictures[-1] < 30
    last = min(viewer.pictures[-1] for viewer in (full, half, quarter))  # frames still in flight at the end aside
    seen = [{n for n in viewer.pictures if n <= last} for viewer in (quarter, half, full)]
    assert seen[0] <= seen[1] <= seen[2]
    for viewer, step in ((half, 2), (quarter, 4)):
        # Every 2nd or 4th picture (a keyframe asked for by a joining viewer restarts the pattern).
        gaps = [b - a for a, b in zip(viewer.pictures, viewer.pictures[1:], strict=False)]
        assert max(gaps) <= step and gaps.count(step) >= 0.8 * len(gaps), gaps


async def test_raising_the_cap_takes_effect_at_a_sync_frame() -> None:
    setup = Setup()
    try:
        await setup.publish()
        viewer, temporal = await setup.view(0)
        await wait_until(lambda: len(viewer.frames) >= 20, timeout=30)
        raised_at = len(viewer.frames)
        temporal.set_target(2)
        await wait_until(lambda: len(viewer.frames) >= raised_at + 60, timeout=30)
    finally:
        await setup.close()

    layers = layers_of(setup.video, viewer)
    assert all(tid == 0 for tid, _ in layers[:raised_at])
    after = layers[raised_at:]
    # One layer up at a time, each at a sync frame of that layer.
    first_1 = next(i for i, (tid, _) in enumerate(after) if tid == 1)
    first_2 = next(i for i, (tid, _) in enumerate(after) if tid == 2)
    assert after[first_1][1] and after[first_2][1]
    assert first_1 < first_2
    assert not viewer.errors and len(viewer.pictures) == len(viewer.frames)
    # Once up, every frame comes: consecutive picture numbers.
    tail = viewer.pictures[raised_at + first_2 :]
    assert tail == list(range(tail[0], tail[0] + len(tail)))
    assert contiguous(viewer.numbers) and viewer.nacks == 0


class _Feed:
    """What a filter hangs on, for the rule alone: no packets."""

    kind = "video"
    mime_type = "video/vp8"

    def __init__(self) -> None:
        self.sinks: set[Any] = set()

    def request_keyframe(self) -> None:
        pass


def test_the_cap_follows_the_link() -> None:
    """The rule on its own, with the layers' rates set and time passed in."""
    temporal = TemporalFilter(_Feed())
    temporal.top, temporal.bitrates = 2, [100_000, 60_000, 140_000, 0]
    now = 100.0
    assert not temporal.decide(now, 2_000_000, 0.0, 0)  # calm, every layer: the spatial layer may climb
    assert temporal.decide(now, 200_000, 0.0, 0) is False  # a low estimate without loss is not believed
    # With some loss it is: the layers that fit 85 % of it.
    assert temporal.decide(now, 200_000, 0.05, 0) and temporal.target == 1  # 170k >= 160k
    assert temporal.decide(now + 1, 50_000, 0.05, 0) and temporal.target == 1  # settling
    assert temporal.decide(now + 2.5, 50_000, 0.05, 0) and temporal.target == 0
    assert not temporal.decide(now + 5, 50_000, 0.2, 0)  # at layer 0 already: the spatial layer's turn
    # Calm again: one layer up after the hold.
    assert temporal.decide(now + 6, 2_000_000, 0.0, 0) and temporal.target == 0
    assert temporal.decide(now + 8.1, 2_000_000, 0.0, 0) and temporal.target == 1
    # That climb meets heavy loss: back down, and layer 1 waits twice as long.
    assert temporal.decide(now + 10.5, 2_000_000, 0.3, 0) and temporal.target == 0
    assert temporal.decide(now + 12.6 + 3.5, 2_000_000, 0.0, 0) and temporal.target == 0
    assert temporal.decide(now + 12.6 + 6.1, 2_000_000, 0.0, 0) and temporal.target == 1
    temporal.close()


async def test_the_api_and_metrics_show_the_temporal_layer(hub: HubProcess, http: aiohttp.ClientSession) -> None:
    token = hub.token("mediator-1", "guomaying", "mediator")
    operator = hub.token("operator-1", "guinan", "operator")
    video = TemporalVideo(3, WIDTH, HEIGHT)
    publisher = await bot.publish(http, hub.url, token, ROOM, [video])
    try:
        stream = publisher.resource_id
        viewer = await bot.view(http, hub.url, operator, stream, kinds=("video",))
        try:

            async def state() -> dict[str, Any]:
                async with http.get(viewer.location, headers=bot._auth(viewer.token)) as r:
                    assert r.status == 200, await r.text()
                    return await r.json()  # type: ignore[no-any-return]

            deadline = asyncio.get_running_loop().time() + 20
            # The top layer shows once the stream's first frames of every TID
            # have come (its first frame alone is TID 0, so 0 is seen first).
            while (choice := await state())["temporal"] != 2:
                assert asyncio.get_running_loop().time() < deadline, choice
                await asyncio.sleep(0.2)
            assert choice["simulcast"] is False and choice["temporal"] == 2
            async with http.get(f"{hub.url}/metrics") as r:
                text = await r.text()
            labels = f'{{stream="{stream}",subscription="{viewer.resource_id}"}}'
            assert f"hub_subscription_temporal_layer{labels} 2.0" in text
        finally:
            await viewer.close()
    finally:
        await publisher.close()


def thin_link(viewer: Viewer, estimate: int, loss: float) -> None:
    """Make a viewer's feedback that of a link carrying `estimate` bits/s and
    losing `loss` of its packets: every receiver report it sends says that
    loss and comes with a REMB of that estimate, and its own REMB (aiortc's
    estimator) is capped there. Nothing is really lost, so every frame that
    arrives must decode."""
    receiver = viewer.pc.getTransceivers()[0].receiver
    send = receiver._send_rtcp

    async def feedback(packet: AnyRtcpPacket) -> None:
        if isinstance(packet, RtcpPsfbPacket) and packet.fmt == RTCP_PSFB_APP:
            return  # the estimate goes with the reports below
        if isinstance(packet, RtcpRrPacket):
            for report in packet.reports:
                report.fraction_lost = max(report.fraction_lost, int(loss * 256))
        await send(packet)
        if isinstance(packet, RtcpRrPacket) and packet.reports:
            remb = pack_remb_fci(estimate, [report.ssrc for report in packet.reports])
            await send(RtcpPsfbPacket(fmt=RTCP_PSFB_APP, ssrc=packet.ssrc, media_ssrc=0, fci=remb))

    receiver._send_rtcp = feedback  # type: ignore[method-assign]


#: Two spatial layers of 320x240 (q 160x120, f 320x240), each in three temporal layers (L1T3).
SIMULCAST_TEMPORAL = (LayerSpec("q", 2, 150_000, temporal=3), LayerSpec("f", 1, 400_000, temporal=3))


async def test_a_simulcast_viewer_on_a_thin_link_gets_the_low_layer_at_a_lower_frame_rate() -> None:
    """Both viewers' tiles need only the low layer; one's feedback (through the
    real RTCP path: its receiver reports and REMB) shows a link too thin for
    even that layer's full frame rate. It gets temporal layer 0 of the low
    layer, every frame of it, decodable; the other gets every frame of it."""
    video = SimulcastVideo("vp8", WIDTH, HEIGHT, 15, specs=SIMULCAST_TEMPORAL)
    setup = Setup(video)
    low = video.layers["q"]
    assert isinstance(low, TemporalVideo)
    small = Tile(160, 120)
    try:
        await setup.publish()
        full, full_filter = await setup.view(tile=small)
        thin, thin_filter = await setup.view(tile=small)
        thin_link(thin, estimate=8_000, loss=0.05)
        consumers = {c.temporal: c for c in setup.router._consumers.values()}
        await wait_until(lambda: thin_filter.layer == 0 and thin_filter.current == 0, timeout=30)
        thin_state = consumers[thin_filter].layer_state()  # what GET /whep/{stream}/{session} shows
        thin_from = len(thin.frames)
        full_from = len(full.frames)
        await wait_until(lambda: len(full.frames) >= full_from + 90, timeout=40)
        full_state = consumers[full_filter].layer_state()
    finally:
        await setup.close()

    assert thin_state is not None and (thin_state.layer, thin_state.temporal, thin_state.estimate) == ("q", 0, 8_000)
    assert full_state is not None and (full_state.layer, full_state.temporal) == ("q", 2), full_state
    sent = {key: (frame.index, low.tids[key]) for key, frame in low.sent.items()}
    for viewer in (full, thin):
        keys = [bot.frame_key(video.mime_type, data) for data in viewer.frames]
        # The low layer's frames, byte for byte (a count of the top layer's, if not).
        unknown = [key for key in keys if key not in sent]
        assert not unknown, (viewer is thin, len(unknown), sum(key in video.layers["f"].sent for key in unknown))
        # Every frame received decoded, in order.
        assert not viewer.errors, viewer.errors
        assert len(viewer.pictures) == len(viewer.frames)
        # No gap where frames were left out, so nothing to ask for again.
        assert contiguous(viewer.numbers) and viewer.nacks == 0, (viewer is thin, viewer.numbers, viewer.nacks)
    full_frames = [sent[bot.frame_key(video.mime_type, data)] for data in full.frames]
    indices = [index for index, _ in full_frames]
    assert indices == sorted(indices) and len(indices) >= 0.97 * (indices[-1] - indices[0] + 1)
    assert {tid for _, (tid, _) in full_frames} == {0, 1, 2}
    # After the cut: temporal layer 0, every frame of it (so no freeze longer
    # than the 4 frame intervals between two of them); layer 1 only where the
    # switch tried it (a publisher slowed down by a busy machine can make the
    # link look calm for 3 s), layer 2 never.
    window = {index for index, _ in full_frames[full_from:]}
    after = [sent[bot.frame_key(video.mime_type, data)] for data in thin.frames[thin_from + 1 :]]
    tids = [tid for _, (tid, _) in after]
    assert after and 2 not in tids, after
    got = {index for index, _ in after}
    base = {index for index, (tid, _) in sent.values() if tid == 0 and after[0][0] <= index <= after[-1][0]}
    assert base <= got, sorted(base - got)
    assert len(after) < 0.5 * len(window), (len(after), len(window))
