"""Cameras: registered through the API, pulled by the hub from a real RTSP
server and from a file, viewed over WHEP with every frame byte for byte the
camera's, reported offline when the source dies and online when it returns."""

from __future__ import annotations

import asyncio
import fractions
import json
import shutil
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import av
import pytest

from client import bot

from .conftest import EventSocket, HubProcess, start_hub, wait_until
from .recording_helpers import set_recording, video_packets
from .rtsp import RtspServer, start_rtsp_server

FPS = 25
FRAMES = 2 * FPS  #: a 2 s loop
PROBLEM = "application/problem+json"
#: Short timeouts and backoff so that a drop and a return show within seconds.
CAMERA_ENV = {
    "HUB_CAMERA_READ_TIMEOUT": "2",
    "HUB_CAMERA_BACKOFF_MIN": "0.5",
    "HUB_CAMERA_BACKOFF_MAX": "2",
    "HUB_CAMERA_NETWORKS": '["127.0.0.1/32"]',  # the RTSP server's
}


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def write_loop(path: Path, encoder: str, pix_fmt: str = "yuv420p", **options: str) -> None:
    """A 2 s file of numbered test pictures (bot.pattern_image), keyframe every second."""
    path.parent.mkdir(exist_ok=True)
    with av.open(str(path), "w") as out:
        stream = out.add_stream(encoder, rate=FPS)
        stream.width, stream.height, stream.pix_fmt = 320, 240, pix_fmt
        stream.options = options | {"g": str(FPS)}
        for i in range(FRAMES):
            frame = av.VideoFrame.from_ndarray(bot.pattern_image(320, 240, i), format="rgb24")
            frame.pts, frame.time_base = i, fractions.Fraction(1, FPS)
            out.mux(stream.encode(frame.reformat(format=pix_fmt)))
        out.mux(stream.encode(None))


def make_loop(path: Path) -> list[bytes]:
    """The 2 s H.264 MP4 loop; returns each frame's digest as a viewer must
    receive it: Annex B with the parameter sets before each keyframe, as
    FFmpeg's own h264_mp4toannexb filter writes it (an implementation
    independent of the hub's)."""
    write_loop(path, "libx264", tune="zerolatency", profile="baseline")
    keys = []
    with av.open(str(path)) as source:
        video = source.streams.video[0]
        annexb = av.BitStreamFilterContext("h264_mp4toannexb", video)
        for packet in source.demux(video):
            for filtered in annexb.filter(packet if packet.size else None):
                keys.append(bot.frame_key("video/h264", bytes(filtered)))
    assert len(keys) == FRAMES
    return keys


@pytest.fixture(scope="module")
def camera_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubProcess]:
    process = start_hub(tmp_path_factory.mktemp("camera-hub"), env=CAMERA_ENV)
    yield process
    process.stop()


@pytest.fixture(scope="module")
def loop_file(camera_hub: HubProcess) -> tuple[Path, list[bytes]]:
    """The known 2 s loop, inside the hub's data directory (where file URLs may point)."""
    path = camera_hub.data / "media" / "loop.mp4"
    return path, make_loop(path)


@pytest.fixture
def rtsp() -> Iterator[RtspServer]:
    server = start_rtsp_server()
    yield server
    server.stop()


def statuses(watcher: EventSocket, camera_id: str) -> list[str]:
    return [e["camera"]["status"] for e in watcher.of("camera-status") if e["camera"]["id"] == camera_id]


@pytest.fixture
async def watcher(camera_hub: HubProcess, http: aiohttp.ClientSession) -> AsyncIterator[EventSocket]:
    """An operator's event WebSocket: the camera-status events of Guinan."""
    w = await EventSocket.open(http, camera_hub, camera_hub.token("op-guinan", "guinan", "operator"))
    yield w
    await w.close()


async def register(hub: HubProcess, http: aiohttp.ClientSession, token: str, **body: str) -> dict[str, Any]:
    async with http.post(f"{hub.url}/api/cameras", json=body, headers=auth(token)) as r:
        assert r.status == 201, await r.text()
        return await r.json()  # type: ignore[no-any-return]


async def camera_status(hub: HubProcess, http: aiohttp.ClientSession, token: str, camera_id: str) -> dict[str, Any]:
    async with http.get(f"{hub.url}/api/cameras/{camera_id}", headers=auth(token)) as r:
        assert r.status == 200, await r.text()
        return await r.json()  # type: ignore[no-any-return]


async def wait_status(
    hub: HubProcess, http: aiohttp.ClientSession, token: str, camera_id: str, status: str, timeout: float
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        camera = await camera_status(hub, http, token, camera_id)
        if camera["status"] == status:
            return camera
        assert time.monotonic() < deadline, f"camera still {camera['status']} ({camera['error']}), not {status}"
        await asyncio.sleep(0.2)


async def check_frames(
    hub: HubProcess, http: aiohttp.ClientSession, token: str, stream: str, keys: list[bytes], mime: str = "video/h264"
) -> None:
    """View the camera's stream for 3 s: every frame must be one of the loop's,
    byte for byte, in the loop's order, and nearly all of them must arrive."""
    viewer = await bot.view(http, hub.url, token, stream, kinds=("video",))
    try:
        log = viewer.logs["video"]
        await wait_until(lambda: log.first_keyframe_at is not None, timeout=20)
        started = time.monotonic()
        await asyncio.sleep(3)
    finally:
        await viewer.close()
    assert log.mime_type.lower() == mime
    index = {key: i for i, key in enumerate(keys)}
    received = [f for f in log.frames if f.received_at >= log.first_keyframe_at]
    positions = [index.get(f.key) for f in received]
    assert None not in positions, "a frame that is not the camera's: something re-encoded or broke it"
    # Consecutive frames follow the loop (wrapping at its end); a frame lost on the way may skip one.
    steps = [(b - a) % FRAMES for a, b in zip(positions, positions[1:], strict=False)]
    assert sum(1 for s in steps if s == 1) >= 0.95 * len(steps), steps
    # Real time: about FPS frames a second, not a burst and not a trickle.
    in_window = [f for f in received if f.received_at >= started]
    assert 2.5 * FPS <= len(in_window) <= 3.5 * FPS, len(in_window)


async def test_file_camera_is_a_stream_viewed_byte_identical(
    camera_hub: HubProcess, http: aiohttp.ClientSession, loop_file: tuple[Path, list[bytes]], watcher: EventSocket
):
    path, keys = loop_file
    operator = camera_hub.token("op-guinan", "guinan", "operator")
    camera = await register(camera_hub, http, operator, site_id="rianxiuma", name="村口", url=f"file://{path}")
    online = await wait_status(camera_hub, http, operator, camera["id"], "online", timeout=20)
    async with http.get(f"{camera_hub.url}/api/streams/{online['stream_id']}", headers=auth(operator)) as r:
        stream = await r.json()
    assert stream["kind"] == "ipcam" and stream["room_id"] == "site-rianxiuma" and stream["participant_id"] is None
    assert stream["camera_id"] == camera["id"] and stream["codecs"] == {"video": "video/H264"}
    await check_frames(camera_hub, http, operator, online["stream_id"], keys)
    assert statuses(watcher, camera["id"])[:2] == ["connecting", "online"]
    event = next(e for e in watcher.of("camera-status") if e["camera"]["status"] == "online")
    assert event["to"] == {"covering": "rianxiuma"}
    assert event["camera"]["stream_id"] == online["stream_id"] and event["camera"]["site_id"] == "rianxiuma"

    async with http.delete(f"{camera_hub.url}/api/cameras/{camera['id']}", headers=auth(operator)) as r:
        assert r.status == 204
    await wait_until(lambda: "removed" in statuses(watcher, camera["id"]), timeout=10)
    async with http.get(f"{camera_hub.url}/api/streams/{online['stream_id']}", headers=auth(operator)) as r:
        assert r.status == 404


async def test_vp8_camera_is_forwarded_as_it_is(camera_hub: HubProcess, http: aiohttp.ClientSession):
    path = camera_hub.data / "media" / "loop.webm"
    write_loop(path, "libvpx", deadline="realtime", **{"cpu-used": "8", "lag-in-frames": "0"})
    with av.open(str(path)) as source:
        keys = [bot.frame_key("video/vp8", bytes(p)) for p in source.demux(video=0) if p.size]
    assert len(keys) == FRAMES
    operator = camera_hub.token("op-guinan", "guinan", "operator")
    camera = await register(camera_hub, http, operator, site_id="guomaying", name="vp8", url=f"file://{path}")
    online = await wait_status(camera_hub, http, operator, camera["id"], "online", timeout=20)
    await check_frames(camera_hub, http, operator, online["stream_id"], keys, mime="video/vp8")
    async with http.delete(f"{camera_hub.url}/api/cameras/{camera['id']}", headers=auth(operator)) as r:
        assert r.status == 204


async def test_rtsp_camera_drops_offline_and_comes_back(
    camera_hub: HubProcess,
    http: aiohttp.ClientSession,
    loop_file: tuple[Path, list[bytes]],
    rtsp: RtspServer,
    watcher: EventSocket,
):
    path, keys = loop_file
    operator = camera_hub.token("op-guinan", "guinan", "operator")
    rtsp.push(path, "gate")
    camera = await register(camera_hub, http, operator, site_id="guomaying", name="gate", url=rtsp.url("gate"))
    first = await wait_status(camera_hub, http, operator, camera["id"], "online", timeout=30)
    await check_frames(camera_hub, http, operator, first["stream_id"], keys)

    # The source dies: the camera goes offline, its stream ends.
    rtsp.stop_pushing(rtsp.pushers[-1])
    offline = await wait_status(camera_hub, http, operator, camera["id"], "offline", timeout=20)
    assert offline["stream_id"] is None and offline["error"]
    async with http.get(f"{camera_hub.url}/api/streams/{first['stream_id']}", headers=auth(operator)) as r:
        assert r.status == 404
    # It comes back: the hub reconnects by itself and publishes a new stream.
    rtsp.push(path, "gate")
    again = await wait_status(camera_hub, http, operator, camera["id"], "online", timeout=30)
    assert again["stream_id"] != first["stream_id"]
    await check_frames(camera_hub, http, operator, again["stream_id"], keys)
    # Every change was announced (an offline event also when only its error changed).
    seen = statuses(watcher, camera["id"])
    changes = [s for i, s in enumerate(seen) if i == 0 or s != seen[i - 1]]
    assert changes[0] == "connecting" and changes[-3:] == ["online", "offline", "online"], changes
    async with http.delete(f"{camera_hub.url}/api/cameras/{camera['id']}", headers=auth(operator)) as r:
        assert r.status == 204


async def test_camera_api_checks_urls_roles_and_jurisdiction(
    camera_hub: HubProcess, http: aiohttp.ClientSession, loop_file: tuple[Path, list[bytes]], tmp_path: Path
):
    operator = camera_hub.token("op-guinan", "guinan", "operator")
    elsewhere = camera_hub.token("op-golmud", "golmud", "operator")
    outside = tmp_path / "outside.mp4"
    shutil.copy(loop_file[0], outside)
    link = camera_hub.data / "media" / "link.mp4"
    link.unlink(missing_ok=True)
    link.symlink_to(outside)
    bad = [
        {"site_id": "rianxiuma", "name": "x", "url": "ftp://127.0.0.1/cam"},
        {"site_id": "rianxiuma", "name": "x", "url": "rtsp:///no-host"},
        {"site_id": "rianxiuma", "name": "x", "url": f"file://{outside}"},  # outside the data directory
        {"site_id": "rianxiuma", "name": "x", "url": f"file://{link}"},  # a link pointing outside it
        {"site_id": "rianxiuma", "name": "x", "url": f"file://{camera_hub.data}/media/../secret.key"},
        {"site_id": "rianxiuma", "name": "x", "url": f"file://{camera_hub.data}/hub.sqlite3"},  # data, not media/
        {"site_id": "rianxiuma", "name": "x", "url": "/etc/passwd"},
        {"site_id": "rianxiuma", "name": "", "url": "rtsp://127.0.0.1/cam"},
        {"site_id": "rianxiuma", "name": "x"},
    ]
    for body in bad:
        async with http.post(f"{camera_hub.url}/api/cameras", json=body, headers=auth(operator)) as r:
            assert r.status == 400 and r.content_type == PROBLEM, (body, r.status)
    async with http.post(
        f"{camera_hub.url}/api/cameras",
        data=aiohttp.StringPayload("[", content_type="application/json"),
        headers=auth(operator),
    ) as r:
        assert r.status == 400 and r.content_type == PROBLEM
    async with http.get(f"{camera_hub.url}/api/cameras", headers=auth(operator)) as r:
        assert await r.json() == []  # nothing was stored

    rtsp_url = "rtsp://user:secret@127.0.0.1:9/cam"  # nothing listens: it stays offline
    # Only admins and operators register, and only in their jurisdiction.
    body = {"site_id": "rianxiuma", "name": "bridge", "url": rtsp_url}
    mediator = camera_hub.token("m-guomaying", "guomaying", "mediator")
    for token in (elsewhere, mediator):
        async with http.post(f"{camera_hub.url}/api/cameras", json=body, headers=auth(token)) as r:
            assert r.status == 403 and r.content_type == PROBLEM
    camera = await register(camera_hub, http, operator, **body)
    assert camera["url"] == "rtsp://user:***@127.0.0.1:9/cam"  # the password is never shown
    offline = await wait_status(camera_hub, http, operator, camera["id"], "offline", timeout=20)
    assert offline["error"] == "unreachable"  # nothing more: not the URL, not its password

    # Golmud's operator neither sees nor touches Guinan's camera; a Guomaying mediator sees it.
    async with http.get(f"{camera_hub.url}/api/cameras", headers=auth(elsewhere)) as r:
        assert camera["id"] not in [c["id"] for c in await r.json()]
    for method in ("GET", "DELETE"):
        async with http.request(method, f"{camera_hub.url}/api/cameras/{camera['id']}", headers=auth(elsewhere)) as r:
            assert r.status in (403, 404) and r.content_type == PROBLEM
    async with http.get(f"{camera_hub.url}/api/cameras?site=guomaying", headers=auth(mediator)) as r:
        assert [c["id"] for c in await r.json()] == [camera["id"]]
    async with http.delete(f"{camera_hub.url}/api/cameras/{camera['id']}", headers=auth(mediator)) as r:
        assert r.status == 403
    async with http.delete(f"{camera_hub.url}/api/cameras/{camera['id']}", headers=auth(operator)) as r:
        assert r.status == 204
    async with http.get(f"{camera_hub.url}/api/cameras/{camera['id']}", headers=auth(operator)) as r:
        assert r.status == 404


def frame_number(image: Any) -> int:
    """The number pattern_image wrote into a picture's top row of blocks."""
    block = 320 // 32
    return sum(int(image[block // 2, bit * block + block // 2, 0] > 128) << bit for bit in range(16))


async def test_mjpeg_camera_is_encoded_once_to_h264(camera_hub: HubProcess, http: aiohttp.ClientSession):
    path = camera_hub.data / "media" / "mjpeg.avi"
    write_loop(path, "mjpeg", "yuvj420p")
    operator = camera_hub.token("op-guinan", "guinan", "operator")
    camera = await register(camera_hub, http, operator, site_id="guinan", name="mjpeg", url=f"file://{path}")
    online = await wait_status(camera_hub, http, operator, camera["id"], "online", timeout=20)
    async with http.get(f"{camera_hub.url}/api/streams/{online['stream_id']}", headers=auth(operator)) as r:
        assert (await r.json())["transcoded"] is True
    viewer = await bot.view(http, camera_hub.url, operator, online["stream_id"], kinds=("video",), decode=True)
    try:
        track = viewer.pc.getReceivers()[0].track
        numbers = []
        for _ in range(30):
            picture = await asyncio.wait_for(track.recv(), timeout=20)
            numbers.append(frame_number(picture.to_ndarray(format="rgb24")))
    finally:
        await viewer.close()
    assert viewer.logs["video"].mime_type.lower() == "video/h264"
    # The pictures are the camera's, in order (a viewer asked for a keyframe: the encoder made one at once).
    assert all(0 <= n < FRAMES for n in numbers), numbers
    steps = [(b - a) % FRAMES for a, b in zip(numbers, numbers[1:], strict=False)]
    assert sum(1 for s in steps if s == 1) >= 0.8 * len(steps), numbers
    async with http.delete(f"{camera_hub.url}/api/cameras/{camera['id']}", headers=auth(operator)) as r:
        assert r.status == 204


async def test_one_hub_process_pulls_a_camera_and_another_takes_over(
    tmp_path: Path, redis_url: str, http: aiohttp.ClientSession, loop_file: tuple[Path, list[bytes]]
):
    data = tmp_path / "shared"
    (data / "media").mkdir(parents=True)
    shutil.copy(loop_file[0], data / "media" / "loop.mp4")
    env = CAMERA_ENV | {"HUB_CAMERA_LEASE_SECONDS": "3"}
    hubs = [start_hub(data, "--redis", redis_url, env=env) for _ in range(2)]
    try:
        operator = hubs[0].token("op-guinan", "guinan", "operator")
        camera = await register(
            hubs[0], http, operator, site_id="shangzhai", name="shared", url=f"file://{data}/media/loop.mp4"
        )
        # Both processes know the camera (one database); exactly one pulls it, for as long as it lives.
        first = await wait_status(hubs[1], http, operator, camera["id"], "online", timeout=20)
        await asyncio.sleep(4)  # more than a lease period: the other process must not take it
        async with http.get(f"{hubs[1].url}/api/rooms/site-shangzhai", headers=auth(operator)) as r:
            streams = [s for s in (await r.json())["streams"] if s.get("camera_id") == camera["id"]]
        assert [s["id"] for s in streams] == [first["stream_id"]]
        holder = next(h for h in hubs if h.url == streams[0]["node_url"])
        other = next(h for h in hubs if h is not holder)
        # Viewing through the other process is redirected to the holder.
        await check_frames(other, http, operator, first["stream_id"], loop_file[1])

        holder.proc.kill()  # dies without a word: its lease runs out, the other process takes over
        holder.proc.wait(10)
        deadline = time.monotonic() + 30
        while True:
            now = await camera_status(other, http, operator, camera["id"])
            if now["status"] == "online" and now["stream_id"] != first["stream_id"]:
                break
            assert time.monotonic() < deadline, now
            await asyncio.sleep(0.3)
        await check_frames(other, http, operator, now["stream_id"], loop_file[1])
    finally:
        for h in hubs:
            h.stop()


async def test_camera_stream_is_recorded_like_any_other(
    camera_hub: HubProcess, http: aiohttp.ClientSession, loop_file: tuple[Path, list[bytes]]
):
    path, keys = loop_file
    operator = camera_hub.token("op-guinan", "guinan", "operator")
    camera = await register(camera_hub, http, operator, site_id="shangzhai", name="rec", url=f"file://{path}")
    await wait_status(camera_hub, http, operator, camera["id"], "online", timeout=20)
    started = await set_recording(http, camera_hub, operator, "site-shangzhai", True)
    await asyncio.sleep(4)
    await set_recording(http, camera_hub, operator, "site-shangzhai", False)
    async with http.delete(f"{camera_hub.url}/api/cameras/{camera['id']}", headers=auth(operator)) as r:
        assert r.status == 204
    folder = camera_hub.data / "recordings" / started["recording"]["id"]
    [stream] = json.loads((folder / "manifest.json").read_text())["streams"]
    assert stream["name"] == "rec"
    recorded = video_packets(folder, stream, "h264")
    # From the camera's next keyframe on (the hub cannot ask a camera for one): the loop's own frames.
    assert len(recorded) >= 2 * FPS and recorded[0][1]
    known = set(keys)
    assert all(bot.frame_key("video/h264", data) in known for data, keyframe in recorded if not keyframe)
