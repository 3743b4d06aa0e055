"""Snapshots of live streams: a real hub taking them every second from real
WHIP publishers (VP8 and H.264), served as JPEG to whoever may see the
stream, listed per branch of the tree, announced only to that branch."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import aiohttp
import cv2
import numpy as np
import pytest

from client.bot import SyntheticAudio, SyntheticVideo, pattern_image, publish

from .conftest import EventSocket, HubProcess, start_hub, wait_until
from .test_cameras import FPS, write_loop

ROOM = "site-rianxiuma"  # a village of guinan county


@pytest.fixture(scope="module")
def snapshot_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubProcess]:
    process = start_hub(tmp_path_factory.mktemp("snapshots"), env={"HUB_SNAPSHOT_SECONDS": "1"})
    yield process
    process.stop()


def colour_blocks(width: int, height: int, index: int) -> np.ndarray:
    """Orange left, teal right, a white bar across: easy to recognise in a thumbnail."""
    img = np.empty((height, width, 3), dtype=np.uint8)
    img[:, : width // 2] = (230, 120, 30)
    img[:, width // 2 :] = (20, 160, 170)
    img[height // 3 : height // 3 + height // 8] = 255
    return img


async def fetch_snapshot(
    http: aiohttp.ClientSession, hub: HubProcess, stream_id: str, token: str
) -> aiohttp.ClientResponse:
    """Poll until the stream has a snapshot; return the (read) 200 response."""
    for _ in range(100):
        response = await http.get(f"{hub.url}/api/streams/{stream_id}/snapshot?token={token}")
        await response.read()
        if response.status != 404:
            return response
        await asyncio.sleep(0.2)
    raise TimeoutError("no snapshot")


async def monitor(http: aiohttp.ClientSession, hub: HubProcess, token: str) -> EventSocket:
    """An event socket in monitoring mode (it also gets snapshot events)."""
    log = await EventSocket.open(http, hub, token)
    await log.ws.send_json({"type": "monitor", "on": True})
    await log.wait_for("ack", timeout=10)
    return log


@pytest.fixture
async def watchers(
    http: aiohttp.ClientSession, snapshot_hub: HubProcess
) -> AsyncIterator[tuple[EventSocket, EventSocket]]:
    """Event logs of a guinan (the stream's county) and a golmud operator."""
    own = await monitor(http, snapshot_hub, snapshot_hub.token("op-guinan", "guinan", "operator"))
    other = await monitor(http, snapshot_hub, snapshot_hub.token("op-golmud", "golmud", "operator"))
    yield own, other
    await own.close()
    await other.close()


@pytest.mark.parametrize("codec", ["vp8", "h264"])
async def test_snapshot_is_the_published_picture(
    http: aiohttp.ClientSession, snapshot_hub: HubProcess, codec: str
) -> None:
    hub = snapshot_hub
    terminal = hub.token("t-rianxiuma", "rianxiuma", "terminal")
    operator = hub.token("op-guinan", "guinan", "operator")
    session = await publish(http, hub.url, terminal, ROOM, [SyntheticVideo(codec, picture=colour_blocks)])
    stream_id = session.resource_id
    try:
        first = await fetch_snapshot(http, hub, stream_id, operator)
        assert first.status == 200 and first.content_type == "image/jpeg"
        assert first.headers["Cache-Control"] == "no-cache"
        picture = cv2.imdecode(np.frombuffer(await first.read(), np.uint8), cv2.IMREAD_COLOR)
        assert picture.shape == (240, 320, 3)
        expected = cv2.resize(cv2.cvtColor(colour_blocks(640, 480, 0), cv2.COLOR_RGB2BGR), (320, 240))
        assert float(cv2.absdiff(picture, expected).mean()) < 8, "the thumbnail is not the published picture"

        # Unchanged since the ETag: 304; a snapshot a period later: a new ETag.
        etag = first.headers["ETag"]
        url = f"{hub.url}/api/streams/{stream_id}/snapshot"
        auth = {"Authorization": f"Bearer {operator}"}
        async with http.get(url, headers=auth | {"If-None-Match": etag}) as again:
            assert again.status in (200, 304)
            assert (again.status == 304) == (again.headers["ETag"] == etag)
        newer = ""
        for _ in range(50):
            async with http.get(url, headers=auth) as response:
                newer = response.headers["ETag"]
            if newer != etag:
                break
            await asyncio.sleep(0.2)
        assert newer != etag, "the snapshot was not refreshed on its period"

        async with http.get(f"{hub.url}/api/snapshots?site=guomaying", headers=auth) as response:
            listed = {s["stream_id"]: s for s in await response.json()}
        assert listed[stream_id]["site_id"] == "rianxiuma"
        assert (listed[stream_id]["width"], listed[stream_id]["height"]) == (320, 240)
        assert "jpeg" not in listed[stream_id]
    finally:
        await session.close()
    async with http.get(f"{hub.url}/api/streams/{stream_id}/snapshot", headers=auth) as response:
        assert response.status == 404  # the stream has ended
    async with http.get(f"{hub.url}/api/snapshots", headers=auth) as response:
        assert stream_id not in {s["stream_id"] for s in await response.json()}


async def test_snapshots_stay_in_their_county(
    http: aiohttp.ClientSession, snapshot_hub: HubProcess, watchers: tuple[EventSocket, EventSocket]
) -> None:
    hub = snapshot_hub
    own, other = watchers
    terminal = hub.token("t-rianxiuma", "rianxiuma", "terminal")
    golmud = {"Authorization": f"Bearer {hub.token('op-golmud', 'golmud', 'operator')}"}
    session = await publish(http, hub.url, terminal, ROOM, [SyntheticVideo("vp8")])
    stream_id = session.resource_id
    try:
        await wait_until(lambda: len([e for e in own.of("snapshot") if e["stream_id"] == stream_id]) >= 2, 30)
        event = own.of("snapshot")[-1]
        assert event["site_id"] == "rianxiuma" and isinstance(event["at"], float)

        async with http.get(f"{hub.url}/api/streams/{stream_id}/snapshot", headers=golmud) as response:
            assert response.status == 403
            assert response.content_type == "application/problem+json"
        async with http.get(f"{hub.url}/api/snapshots", headers=golmud) as response:
            assert response.status == 200 and await response.json() == []
        async with http.get(f"{hub.url}/api/snapshots?site=guinan", headers=golmud) as response:
            assert response.status == 403
        async with http.get(f"{hub.url}/api/streams/{stream_id}/snapshot") as response:
            assert response.status == 401
        guest = hub.token("guest-1", "golmud", "guest", room="site-golmud")
        async with http.get(f"{hub.url}/api/streams/{stream_id}/snapshot?token={guest}") as response:
            assert response.status == 403
        async with http.get(f"{hub.url}/api/streams/no-such-stream/snapshot", headers=golmud) as response:
            assert response.status == 404
    finally:
        await session.close()
    assert not [e for e in other.messages if e["type"] in ("snapshot", "alert-raised", "alert-cleared")]


async def test_snapshot_of_a_stream_without_video_is_404(http: aiohttp.ClientSession, snapshot_hub: HubProcess) -> None:
    hub = snapshot_hub
    terminal = hub.token("t-rianxiuma", "rianxiuma", "terminal")
    session = await publish(http, hub.url, terminal, ROOM, [SyntheticAudio()])
    try:
        await asyncio.sleep(2)  # two periods: a video stream would have had its snapshot
        headers = {"Authorization": f"Bearer {terminal}"}
        async with http.get(f"{hub.url}/api/streams/{session.resource_id}/snapshot", headers=headers) as response:
            assert response.status == 404
            assert "no snapshot" in (await response.json())["detail"]
    finally:
        await session.close()


async def test_a_camera_is_snapshotted_like_any_stream(http: aiohttp.ClientSession, snapshot_hub: HubProcess) -> None:
    """A camera the hub pulls (here from a file of test pictures) gets snapshots carrying its camera id."""
    hub = snapshot_hub
    path = hub.data / "media" / "snapshot-loop.mp4"
    write_loop(path, "libx264", tune="zerolatency", profile="baseline")
    auth = {"Authorization": f"Bearer {hub.token('op-guinan', 'guinan', 'operator')}"}
    body = {"site_id": "rianxiuma", "name": "村口", "url": f"file://{path}"}
    async with http.post(f"{hub.url}/api/cameras", json=body, headers=auth) as response:
        assert response.status == 201, await response.text()
        camera = await response.json()
    try:
        listed: list[dict[str, object]] = []

        async def camera_snapshots() -> list[dict[str, object]]:
            async with http.get(f"{hub.url}/api/snapshots?site=rianxiuma", headers=auth) as response:
                return [s for s in await response.json() if s.get("camera_id") == camera["id"]]

        for _ in range(100):
            if listed := await camera_snapshots():
                break
            await asyncio.sleep(0.2)
        assert listed, "the camera got no snapshot"
        async with http.get(f"{hub.url}/api/streams/{listed[0]['stream_id']}/snapshot", headers=auth) as response:
            picture = cv2.imdecode(np.frombuffer(await response.read(), np.uint8), cv2.IMREAD_COLOR)
        # The file's keyframes are its pictures 0 and FPS (a keyframe a second): the snapshot is one of them.
        nearest = min(
            float(cv2.absdiff(picture, cv2.cvtColor(pattern_image(320, 240, i), cv2.COLOR_RGB2BGR)).mean())
            for i in (0, FPS)
        )
        assert nearest < 8, "the camera's snapshot is not one of its pictures"
    finally:
        async with http.delete(f"{hub.url}/api/cameras/{camera['id']}", headers=auth) as response:
            assert response.status == 204
