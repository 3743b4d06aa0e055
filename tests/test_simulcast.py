"""Simulcast: the Python client publishes three layers, each viewer gets the
layer its tile needs, switched at keyframes in one continuous stream."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from client import bot
from client.simulcast import SimulcastVideo

from .conftest import HubProcess, wait_until

ROOM = "site-rianxiuma"


def _session(hub: HubProcess, viewer: bot.Session) -> str:
    return viewer.location


async def layer_of(http: aiohttp.ClientSession, viewer: bot.Session) -> dict[str, Any]:
    async with http.get(viewer.location, headers=bot._auth(viewer.token)) as r:
        assert r.status == 200, await r.text()
        return await r.json()  # type: ignore[no-any-return]


async def set_tile(http: aiohttp.ClientSession, viewer: bot.Session, width: int, height: int) -> aiohttp.ClientResponse:
    async with http.patch(viewer.location, json={"width": width, "height": height}, headers=bot._auth(viewer.token)) as r:
        await r.read()
        return r


async def wait_layer(http: aiohttp.ClientSession, viewer: bot.Session, rid: str | None, timeout: float = 15) -> None:
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

    def __init__(self, viewer: bot.Session) -> None:
        self.sizes: list[tuple[int, int]] = []
        self._task = asyncio.ensure_future(self._read(viewer.pc.getReceivers()[0].track))

    async def _read(self, track: Any) -> None:
        while True:
            picture = await track.recv()
            self.sizes.append((picture.width, picture.height))

    def close(self) -> None:
        self._task.cancel()


async def test_viewers_get_the_layer_their_tile_needs(hub: HubProcess, http: aiohttp.ClientSession):
    token = hub.token("mediator-1", "guomaying", "mediator")
    operator = hub.token("operator-1", "guinan", "operator")
    video = SimulcastVideo("vp8", 320, 240, 30)
    publisher = await bot.publish(http, hub.url, token, ROOM, [video])
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
        pictures = Pictures(small)
        await wait_until(lambda: (320, 240) in pictures.sizes, timeout=15)

        response = await set_tile(http, small, 75, 55)
        assert response.status == 200
        assert (await set_tile(http, large, 320, 240)).status == 200
        await wait_layer(http, small, "q")
        # The decoder goes on after the switch: the pictures are the low layer's.
        await wait_until(lambda: pictures.sizes[-30:] == [(80, 60)] * 30, timeout=20)
        pictures.close()
        await asyncio.sleep(1)
        state = await layer_of(http, large)
        assert state["layer"] == "f", (state["estimate"], state["switches"], state["layers"][-1])
        assert (await layer_of(http, large))["switches"] == 1  # its first layer, no switch since
    finally:
        await small.close()
        await large.close()
        await publisher.close()

    # Every frame a viewer received is byte for byte one of the layer it was on.
    low, top = video.layers["q"], video.layers["f"]
    frames = small.logs["video"].frames
    first_low = next(i for i, f in enumerate(frames) if f.key in low.sent)
    assert frames[first_low].keyframe  # it began the low layer at a keyframe
    assert all(f.key in top.sent for f in frames[:first_low])
    assert all(f.key in low.sent for f in frames[first_low:])
    assert len(frames) - first_low >= 20
    assert bot.compare(top, large.logs["video"]).unknown == 0
    # One SSRC, sequence numbers without a gap, across the switch.
    for viewer in (small, large):
        streams = remote_streams(viewer)
        assert len(streams) == 1
        assert next(iter(streams.values())).packets_lost == 0


@pytest.mark.parametrize("body", [{"width": 0, "height": 100}, {"width": -1, "height": 10}, {"width": "1", "height": 2}])
async def test_bad_tile_sizes_are_refused(hub: HubProcess, http: aiohttp.ClientSession, body: dict[str, Any]):
    token = hub.token("mediator-1", "guomaying", "mediator")
    video = SimulcastVideo("vp8", 320, 240, 30)
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
