"""Simulcast: the Python client publishes three layers, each viewer gets the
layer its tile needs, switched at keyframes in one continuous stream."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
import cv2
import numpy as np
import pytest
from aiortc import RTCPeerConnection, RTCRtpReceiver
from aiortc.rtp import RtpPacket

from client import bot
from client.simulcast import SimulcastVideo
from hub.media import layers
from hub.media.layers import RID_URI
from hub.media.router import Router

from .conftest import HubProcess, start_hub, wait_until
from .peers import publish_and_view, tap_rtp

ROOM = "site-rianxiuma"


async def layer_of(http: aiohttp.ClientSession, viewer: bot.Session) -> dict[str, Any]:
    async with http.get(viewer.location, headers=bot._auth(viewer.token)) as r:
        assert r.status == 200, await r.text()
        return await r.json()  # type: ignore[no-any-return]


async def set_tile(http: aiohttp.ClientSession, viewer: bot.Session, width: int, height: int) -> aiohttp.ClientResponse:
    body = {"width": width, "height": height}
    async with http.patch(viewer.location, json=body, headers=bot._auth(viewer.token)) as r:
        await r.read()
        return r


async def wait_layer(http: aiohttp.ClientSession, viewer: bot.Session, rid: str | None, timeout: float = 20) -> None:
    async def check() -> bool:
        return (await layer_of(http, viewer))["layer"] == rid

    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, await layer_of(http, viewer)
        await asyncio.sleep(0.2)


def remote_streams(viewer: bot.Session) -> dict[int, Any]:
    receiver = viewer.pc.getReceivers()[0]
    return receiver._RTCRtpReceiver__remote_streams  # type: ignore[attr-defined, no-any-return]


class Pictures:
    """The size of every picture a decoding viewer's track yields, read as they come."""

    def __init__(self, receiver: RTCRtpReceiver) -> None:
        self.sizes: list[tuple[int, int]] = []
        self._task = asyncio.ensure_future(self._read(receiver.track))

    async def _read(self, track: Any) -> None:
        while True:
            picture = await track.recv()
            self.sizes.append((picture.width, picture.height))

    def close(self) -> None:
        self._task.cancel()


async def test_viewers_get_the_layer_their_tile_needs(hub: HubProcess, http: aiohttp.ClientSession):
    token = hub.token("mediator-1", "guomaying", "mediator")
    operator = hub.token("operator-1", "guinan", "operator")
    video = SimulcastVideo("vp8", 320, 240, 15)
    publisher = await bot.publish(http, hub.url, token, ROOM, [video])
    # The hub knows a layer once it has seen it: a viewer that came before the top layer's first
    # packet would start lower, and switch up.
    await wait_until(lambda: all(len(layer.sent) >= 3 for layer in video.layers.values()), timeout=15)
    small = await bot.view(http, hub.url, operator, publisher.resource_id, kinds=("video",), decode=True)
    large = await bot.view(http, hub.url, operator, publisher.resource_id, kinds=("video",))
    try:
        # Before a size is stated a viewer gets the top layer.
        await wait_layer(http, small, "f")
        await wait_layer(http, large, "f")
        state = await layer_of(http, large)
        assert state["simulcast"] is True
        assert [(layer["rid"], layer["width"], layer["height"]) for layer in state["layers"]] == [
            ("q", 80, 60),
            ("h", 160, 120),
            ("f", 320, 240),
        ]
        pictures = Pictures(small.pc.getReceivers()[0])
        await wait_until(lambda: (320, 240) in pictures.sizes, timeout=15)

        response = await set_tile(http, small, 75, 55)
        assert response.status == 200
        assert (await set_tile(http, large, 320, 240)).status == 200
        await wait_layer(http, small, "q")
        # The decoder goes on after the switch: the pictures are the low layer's.
        await wait_until(lambda: pictures.sizes[-30:] == [(80, 60)] * 30, timeout=20)
        async with http.get(f"{hub.url}/metrics") as r:
            metrics = await r.text()
        stream = publisher.resource_id
        assert f'{{layer="q",stream="{stream}",subscription="{small.resource_id}"}} 0.0' in metrics
        assert f'{{layer="f",stream="{stream}",subscription="{large.resource_id}"}} 2.0' in metrics
        # And back up when the tile grows.
        assert (await set_tile(http, small, 320, 240)).status == 200
        await wait_layer(http, small, "f")
        await wait_until(lambda: pictures.sizes[-30:] == [(320, 240)] * 30, timeout=20)
        pictures.close()
        state = await layer_of(http, large)
        assert state["layer"] == "f", (state["estimate"], state["layers"][-1])
        assert state["switches"] == 0
        assert (await layer_of(http, small))["switches"] == 2
    finally:
        await small.close()
        await large.close()
        await publisher.close()

    # Every frame a viewer received is byte for byte one of the layer it was
    # on, and each layer began at one of its keyframes: f, then q, then f.
    low, top = video.layers["q"], video.layers["f"]
    frames = small.logs["video"].frames
    runs: list[tuple[str, list[bot.ReceivedFrame]]] = []
    for frame in frames:
        rid = "q" if frame.key in low.sent else "f" if frame.key in top.sent else "?"
        if not runs or runs[-1][0] != rid:
            runs.append((rid, []))
        runs[-1][1].append(frame)
    assert [rid for rid, _ in runs] == ["f", "q", "f"]
    assert all(run[0].keyframe for _, run in runs)
    assert len(runs[1][1]) >= 20
    assert bot.compare(top, large.logs["video"]).unknown == 0
    # One SSRC, sequence numbers without a gap, across the switch.
    for viewer in (small, large):
        streams = remote_streams(viewer)
        assert len(streams) == 1
        assert next(iter(streams.values())).packets_lost == 0


BAD_SIZES = [{"width": 0, "height": 100}, {"width": -1, "height": 10}, {"width": "1", "height": 2}, {"width": 9}]


@pytest.mark.parametrize("body", BAD_SIZES)
async def test_bad_tile_sizes_are_refused(hub: HubProcess, http: aiohttp.ClientSession, body: dict[str, Any]):
    token = hub.token("mediator-1", "guomaying", "mediator")
    video = SimulcastVideo("vp8", 320, 240, 15)
    publisher = await bot.publish(http, hub.url, token, ROOM, [video])
    viewer = await bot.view(http, hub.url, token, publisher.resource_id, kinds=("video",))
    try:
        await wait_layer(http, viewer, "f")
        async with http.patch(viewer.location, json=body, headers=bot._auth(token)) as r:
            assert r.status == 400
            assert r.content_type == "application/problem+json"
        assert (await layer_of(http, viewer))["layer"] == "f"
    finally:
        await viewer.close()
        await publisher.close()


async def test_a_hidden_tile_gets_no_video_and_keeps_its_audio(hub: HubProcess, http: aiohttp.ClientSession):
    token = hub.token("mediator-1", "guomaying", "mediator")
    video, audio = SimulcastVideo("vp8", 320, 240, 15), bot.SyntheticAudio()
    publisher = await bot.publish(http, hub.url, token, ROOM, [video, audio])
    viewer = await bot.view(http, hub.url, token, publisher.resource_id)
    frames, sounds = viewer.logs["video"].frames, viewer.logs["audio"].frames
    try:
        await wait_layer(http, viewer, "f")
        await wait_until(lambda: len(frames) > 10, timeout=20)
        assert (await set_tile(http, viewer, 0, 0)).status == 200
        assert (await layer_of(http, viewer))["layer"] is None
        hidden_since = time.monotonic()
        for _ in range(10):  # until what was in flight (a busy machine's backlog) has come
            hidden_at = len(frames)
            await asyncio.sleep(1)
            if len(frames) == hidden_at:
                break
        await asyncio.sleep(2)
        assert len(frames) == hidden_at

        shown_at = time.monotonic()
        assert (await set_tile(http, viewer, 80, 60)).status == 200
        await wait_layer(http, viewer, "q")
        await wait_until(lambda: len(frames) > hidden_at + 20, timeout=20)
    finally:
        await viewer.close()
        await publisher.close()
    # The audio went on all the while.
    while_hidden = {key for key, f in audio.sent.items() if hidden_since <= f.sent_at <= shown_at}
    assert len(while_hidden) >= 20  # 3 s or more at 50 a second, or what a busy machine sent
    assert len(while_hidden & {f.key for f in sounds}) >= 0.9 * len(while_hidden)
    # aiortc's jitter buffer holds a frame until the next one begins: the
    # last frame before the tile was hidden comes out with the first after.
    after = frames[hidden_at + 1 :]
    assert all(f.key in video.layers["q"].sent for f in after)
    assert after[0].keyframe
    # The hidden spell left no gap in the sequence numbers.
    assert next(iter(remote_streams(viewer).values())).packets_lost == 0


def layer_colour(width: int, height: int, index: int) -> np.ndarray:
    """Each layer in its own colour (RGB), so that a picture tells which layer it came from."""
    colour = {80: (200, 40, 40), 160: (200, 40, 40), 320: (40, 200, 40), 640: (40, 40, 200)}[width]
    return np.full((height, width, 3), colour, dtype=np.uint8)


async def test_snapshots_take_the_lowest_layer_that_fills_them(tmp_path: Path, http: aiohttp.ClientSession):
    hub = start_hub(tmp_path, env={"HUB_SNAPSHOT_SECONDS": "1"})
    token = hub.token("mediator-1", "guomaying", "mediator")
    video = SimulcastVideo("vp8", 640, 480, 15, picture=layer_colour)
    publisher = await bot.publish(http, hub.url, token, ROOM, [video])
    try:
        url = f"{hub.url}/api/streams/{publisher.resource_id}/snapshot"
        picture = None
        for _ in range(60):  # the layers' sizes are known after their first keyframes
            async with http.get(url, headers=bot._auth(token)) as r:
                if r.status == 200:
                    picture = cv2.imdecode(np.frombuffer(await r.read(), np.uint8), cv2.IMREAD_COLOR)
                    if picture[..., 1].mean() > 150:
                        break
            await asyncio.sleep(0.5)
    finally:
        await publisher.close()
        hub.stop()
    assert picture is not None
    # The ½ layer (320 px, green), not the full one (blue) scaled down.
    assert picture.shape[:2] == (240, 320)
    blue, green, red = (picture[..., i].mean() for i in range(3))
    assert green > 150 and blue < 100 and red < 100, (blue, green, red)


class BadSimulcast(SimulcastVideo):
    """Publishes an offer spoiled by `spoil`."""

    def __init__(self, spoil: Any) -> None:
        super().__init__("vp8", 160, 120, 15)
        self._spoil = spoil

    def shape_offer(self, sdp: str) -> str:
        return str(self._spoil(super().shape_offer(sdp)))


SPOILED = {
    "no rid extension": lambda sdp: "\r\n".join(line for line in sdp.split("\r\n") if RID_URI not in line),
    "repeated rid": lambda sdp: sdp.replace("a=simulcast:send q;h;f", "a=simulcast:send q;q;f"),
    "undeclared rid": lambda sdp: sdp.replace("a=simulcast:send q;h;f", "a=simulcast:send q;h;x"),
}


@pytest.mark.parametrize("spoil", SPOILED.values(), ids=SPOILED.keys())
async def test_bad_simulcast_offers_are_refused(hub: HubProcess, http: aiohttp.ClientSession, spoil: Any):
    token = hub.token("mediator-1", "guomaying", "mediator")
    with pytest.raises(bot.ClientError, match="400"):
        await bot.publish(http, hub.url, token, ROOM, [BadSimulcast(spoil)])


@pytest.mark.usefixtures("forward_path")
async def test_a_probes_padding_leaves_the_viewers_frames_and_sequence_whole():
    """A viewer held on q climbs back after a probe: the hub's padding-only packets reach a real
    aiortc viewer in its sequence (no number missing), and its decoder sees only the publisher's
    frames, byte for byte. In this process, so that the test can hold the switch's cap at q."""
    router = Router(None, max_backlog=1 << 20, keyframe_interval=0.1, ice_servers=[], connect_timeout=10.0)
    video = SimulcastVideo("vp8", 320, 240, 15)
    publisher = RTCPeerConnection(bot.NO_ICE_SERVERS)
    sending = publisher.addTransceiver(video, direction="sendonly")
    sending.setCodecPreferences([c for c in RTCRtpReceiver.getCapabilities("video").codecs
                                 if c.mimeType.lower() in ("video/vp8", "video/rtx")])  # fmt: skip
    video.attach(sending.sender)
    viewer = RTCPeerConnection(bot.NO_ICE_SERVERS)
    receiver = viewer.addTransceiver("video", direction="recvonly").receiver
    log = bot.TrackLog("video")
    bot.record_receiver(receiver, log, decode=True)
    padding: list[int] = []

    def seen(packet: RtpPacket) -> None:
        if packet.padding_size and not packet.payload:
            padding.append(packet.sequence_number)

    tap_rtp(receiver, seen)
    pictures = None
    try:
        _, subscription = await publish_and_view(router, publisher, viewer, video.shape_offer)
        switch = router._consumers[subscription.id].switch
        assert switch is not None
        pictures = Pictures(receiver)
        await wait_until(lambda: switch.layer == "f" and len(pictures.sizes) > 10, timeout=30)
        # As if its link had been full: capped at q, it climbs only after a probe of h and f.
        switch._cap = switch.source.layer("q")
        await wait_until(lambda: switch.layer == "q", timeout=20)
        await wait_until(lambda: switch.layer == "f", timeout=layers.UP_HOLD + layers.PROBE_HOLD + 30)
        await wait_until(lambda: pictures.sizes[-10:] == [(320, 240)] * 10, timeout=20)
        # (One probe, unless a stalled event loop lost packets on the loopback during it.)
        assert switch.probes >= 1
        stats = next(iter(receiver._RTCRtpReceiver__remote_streams.values()))  # type: ignore[attr-defined]
    finally:
        if pictures is not None:
            pictures.close()
        await viewer.close()
        await publisher.close()
        await router.close()
    assert len(padding) >= 5, len(padding)
    assert stats.packets_lost <= 0  # every number came (retransmissions may come twice)
    known = video.layers["q"].sent.keys() | video.layers["f"].sent.keys()
    assert log.frames and all(frame.key in known for frame in log.frames)
    assert (80, 60) in pictures.sizes and pictures.sizes[-1] == (320, 240)
