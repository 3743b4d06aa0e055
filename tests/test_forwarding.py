"""Media through the hub: real aiortc peers over loopback, frames compared by digest."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import aiohttp
import pytest

from client import bot
from hub.media import forward

from .conftest import ROOT, HubProcess, start_hub, wait_until


@pytest.fixture(scope="module", params=forward.FORWARD_PATHS)
def hub(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubProcess]:
    """A hub per send path (HUB_FORWARD): every test here runs on each."""
    path = request.param
    assert path == "python" or forward._fastsend is not None, "hub.media._fastsend is not built"
    process = start_hub(tmp_path_factory.mktemp(f"hub-{path}"), env={"HUB_FORWARD": path})
    yield process
    process.stop()
    assert f"forwarding path: {path}" in process.log.read_text()


@pytest.mark.parametrize("codec", ["vp8", "h264"])
async def test_video_and_audio_forwarded_byte_identical(hub: HubProcess, http: aiohttp.ClientSession, codec: str):
    token = hub.token("mediator-1", "guomaying", "mediator")
    video = bot.SyntheticVideo(codec, 320, 240, 30, frames=150)
    audio = bot.SyntheticAudio(frames=250)
    publisher = await bot.publish(http, hub.url, token, "site-rianxiuma", [video, audio])
    viewer = await bot.view(http, hub.url, hub.token("operator-1", "guinan", "operator"), publisher.resource_id)
    try:
        await wait_until(lambda: video.readyState == "ended", timeout=20)
        await asyncio.sleep(0.5)  # the last frames in flight
    finally:
        await viewer.close()
        await publisher.close()

    # The viewer joins a moment after the publisher starts: it is owed every
    # frame from the first keyframe it received on.
    log = viewer.logs["video"]
    assert log.first_keyframe_at is not None
    first_key = next(f for f in log.frames if f.keyframe)
    since = video.sent[first_key.key].sent_at
    delivery = bot.compare(video, log, since=since)
    assert delivery.sent >= 100
    assert delivery.ratio >= 0.95, delivery
    assert delivery.in_order
    # Every received frame is byte for byte one that was sent: nothing re-encoded.
    assert delivery.unknown == 0
    assert log.mime_type.lower() == f"video/{codec}"

    audio_log = viewer.logs["audio"]
    audio_delivery = bot.compare(audio, audio_log, since=since)
    assert audio_log.mime_type.lower() == "audio/opus"
    assert audio_delivery.ratio >= 0.95, audio_delivery
    assert audio_delivery.unknown == 0 and audio_delivery.in_order


async def test_publisher_leaving_ends_viewer_sessions(hub: HubProcess, http: aiohttp.ClientSession):
    token = hub.token("mediator-2", "minkang", "mediator")
    video = bot.SyntheticVideo("vp8", 320, 240, 30)
    publisher = await bot.publish(http, hub.url, token, "site-minkang", [video])
    viewer = await bot.view(http, hub.url, token, publisher.resource_id, kinds=("video",))
    await wait_until(lambda: len(viewer.logs["video"].frames) > 10, timeout=10)
    async with http.ws_connect(f"{hub.url}/ws?token={token}") as ws:
        assert (await ws.receive_json(timeout=5))["type"] == "hello"
        await ws.send_json({"type": "join", "room": "site-minkang"})
        joined = await ws.receive_json(timeout=5)
        assert [s["id"] for s in joined["streams"]] == [publisher.resource_id]

        await publisher.close()
        events = []
        while not any(e["type"] == "participant-left" for e in events):
            events.append(await ws.receive_json(timeout=5))
        removed = {"type": "stream-removed", "room_id": "site-minkang", "stream_id": publisher.resource_id}
        assert removed in [{k: v for k, v in e.items() if k != "seq"} for e in events]  # each event is numbered
    # The hub closes the viewer's peer connection (DTLS close_notify).
    await wait_until(lambda: viewer.pc.connectionState == "closed", timeout=10)
    await viewer.pc.close()
    async with http.get(f"{hub.url}/api/streams/{publisher.resource_id}", headers=bot._auth(token)) as r:
        assert r.status == 404


async def test_stalled_viewer_loses_only_its_own_frames(hub: HubProcess, http: aiohttp.ClientSession):
    """A viewer process frozen for 2 s (SIGSTOP) must not cost the other
    viewer a frame, and must go on receiving when it wakes."""
    token = hub.token("mediator-3", "qutan", "mediator")
    video = bot.SyntheticVideo("vp8", 320, 240, 30, frames=240)
    publisher = await bot.publish(http, hub.url, token, "site-qutancun", [video])
    stalled = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hub",
            "bot",
            "view",
            "--url",
            hub.url,
            "--token",
            token,
            f"--stream={publisher.resource_id}",  # "=": an id may begin with "-" (token_urlsafe)
            "--seconds",
            "6",
            "--ice-address",
            "127.0.0.1",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    healthy = await bot.view(http, hub.url, token, publisher.resource_id, kinds=("video",))
    try:
        await asyncio.sleep(1.5)
        os.kill(stalled.pid, signal.SIGSTOP)
        stopped_at = time.monotonic()
        await asyncio.sleep(2)
        os.kill(stalled.pid, signal.SIGCONT)
        await wait_until(lambda: video.readyState == "ended", timeout=40)  # a bound: the test process encodes
        await asyncio.sleep(0.5)
    finally:
        os.kill(stalled.pid, signal.SIGCONT)
        out, _ = stalled.communicate(timeout=20)
        await healthy.close()
        await publisher.close()
    log = healthy.logs["video"]
    # Every frame the publisher sent while the other viewer was frozen reached
    # this one (counted by what was sent, so a busy machine does not matter).
    sent_during = {k for k, f in video.sent.items() if stopped_at <= f.sent_at <= stopped_at + 2}
    received = {f.key for f in log.frames}
    assert len(sent_during) >= 10  # the publisher did send while it was frozen (fewer on a starved machine)
    assert len(sent_during & received) >= 0.95 * len(sent_during)
    assert bot.compare(video, log, since=video.sent[log.frames[0].key].sent_at).ratio >= 0.95
    report = json.loads(out.strip().splitlines()[-1])
    # It woke up and went on receiving: frames came well after it was woken
    # (monotonic clocks agree across processes), and not a trickle — judged
    # against what the healthy viewer got, not against 30 fps, which a loaded
    # machine's publisher does not keep; it watched ~5 s of the healthy one's 8.
    assert report["video"]["last_frame_at"] >= stopped_at + 3, (report, stopped_at)
    assert report["video"]["frames"] >= 0.3 * len(log.frames), (report, len(log.frames))
