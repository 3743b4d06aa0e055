"""Recording a room: frames byte-identical to those sent, segments, manifest,
catalogue and its HTTP API (ranges, paths, jurisdiction, audit, verify, export)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator

import aiohttp
import av
import pytest
from yarl import URL

from client import bot
from recorder.manifest import verify as verify_folder

from .conftest import ROOT, HubProcess, wait_until
from .recording_helpers import ROOM, Recorded, auth, decoded_seconds, record, set_recording, video_packets

SECONDS = 10


@pytest.fixture(scope="module")
def recorded(hub: HubProcess) -> Iterator[Recorded]:
    """One 10 s recording shared by this module's tests (each reads, none alters it)."""
    yield asyncio.run(record(hub, SECONDS))


def test_recorded_frames_are_the_frames_sent(recorded: Recorded):
    manifest = recorded.manifest
    assert manifest["status"] == "complete" and manifest["room_id"] == ROOM
    [stream] = manifest["streams"]
    assert stream["codecs"] == {"video": "video/vp8", "audio": "audio/opus"}
    assert (stream["width"], stream["height"]) == (320, 240)
    assert len(stream["segments"]) >= 4  # 2 s segments, each cut at a keyframe

    packets = video_packets(recorded.folder, stream)
    sent = recorded.video.sent
    keys = [bot.frame_key("video/VP8", data) for data, _ in packets]
    indices = [sent[key].index for key in keys if key in sent]
    # Byte for byte the frames that were sent: none re-encoded, none altered.
    assert len(indices) == len(packets)
    assert indices == sorted(indices) and len(set(indices)) == len(indices)
    assert len(indices) >= 0.95 * len(sent)
    # Every segment starts with a keyframe, so each plays on its own.
    for seg in stream["segments"]:
        with av.open(str(recorded.folder / seg["path"])) as container:
            assert next(p for p in container.demux(video=0) if p.size).is_keyframe

    frames, seconds = decoded_seconds(recorded.folder, stream)
    assert frames >= 0.95 * len(sent)
    assert abs(seconds - SECONDS) <= 0.05 * SECONDS
    listed = sum(seg["duration"] for seg in stream["segments"])
    assert abs(listed - SECONDS) <= 0.05 * SECONDS

    with av.open(str(recorded.folder / stream["segments"][0]["path"])) as container:
        assert container.streams.audio[0].codec_context.name == "opus"
        assert sum(1 for _ in container.decode(audio=0)) > 0


async def test_h264_is_remuxed_into_matroska(hub: HubProcess):
    recorded = await record(hub, 4, codec="h264", audio=False)
    [stream] = recorded.manifest["streams"]
    assert stream["codecs"] == {"video": "video/h264"} and (stream["width"], stream["height"]) == (320, 240)
    assert all(seg["path"].endswith(".mkv") for seg in stream["segments"])
    packets = video_packets(recorded.folder, stream, codec="h264")
    sent = recorded.video.sent
    keys = [bot.frame_key("video/H264", data) for data, _ in packets]
    indices = [sent[key].index for key in keys if key in sent]
    assert len(indices) == len(packets) and indices == sorted(indices)  # the NAL units sent, unchanged
    assert len(indices) >= 0.95 * len(sent)
    frames, seconds = decoded_seconds(recorded.folder, stream)
    assert frames >= 0.95 * len(sent) and abs(seconds - 4) <= 0.2
    assert verify_folder(recorded.folder, recorded.manifest).intact  # every Matroska segment opens and decodes


async def test_recorded_opus_holds_the_packets_a_live_viewer_received(hub: HubProcess, http: aiohttp.ClientSession):
    """Audio that arrived after the video keyframe cutting the next segment used to be dropped
    at every cut; the recording now holds what a viewer of the same stream got."""
    token = hub.token("mediator-opus", "guomaying", "mediator")
    video = bot.SyntheticVideo("vp8", 320, 240, 30, frames=8 * 30)
    audio = bot.SyntheticAudio(frames=8 * 50)
    started = await set_recording(http, hub, token, ROOM, True)
    publisher = await bot.publish(http, hub.url, token, ROOM, [video, audio])
    viewer = await bot.view(http, hub.url, token, publisher.resource_id, kinds=("audio",))
    try:
        await wait_until(lambda: video.readyState == "ended", timeout=120)
        await asyncio.sleep(0.5)  # the last packets in flight
    finally:
        await viewer.close()
        await publisher.close()  # the stream ends first, so the recording keeps its last packets
        await set_recording(http, hub, token, ROOM, False)

    folder = hub.data / "recordings" / started["recording"]["id"]
    [stream] = json.loads((folder / "manifest.json").read_text())["streams"]
    assert len(stream["segments"]) >= 3  # cut at least twice
    recorded = set()
    for seg in stream["segments"]:
        with av.open(str(folder / seg["path"])) as container:
            for packet in container.demux(audio=0):
                if packet.size and packet.decode():
                    recorded.add(audio.sent[bot.frame_key("audio/opus", bytes(packet))].index)
    viewed = [audio.sent[f.key].index for f in viewer.logs["audio"].frames]
    assert len(viewed) >= 100, len(viewed)
    # The same interval: the recording was on before the stream began and stopped after it ended.
    expected = set(viewed)
    held = len(expected & recorded)
    assert held >= 0.99 * len(expected), (held, len(expected), sorted(expected - recorded))


async def test_range_requests_and_audit(hub: HubProcess, recorded: Recorded, http: aiohttp.ClientSession):
    seg = recorded.manifest["streams"][0]["segments"][1]
    data = (recorded.folder / seg["path"]).read_bytes()
    url = f"{hub.url}/api/recordings/{recorded.id}/files/{seg['path']}"
    # A <video> element can only pass the token in the query.
    async with http.get(url, params={"token": recorded.token}, headers={"Range": "bytes=0-"}) as r:
        assert r.status == 206 and await r.read() == data
    async with http.get(url, headers=auth(recorded.token) | {"Range": "bytes=100-299"}) as r:
        assert r.status == 206
        assert r.headers["Content-Range"] == f"bytes 100-299/{len(data)}"
        assert await r.read() == data[100:300]

    operator = hub.token("op-guinan", "guinan", "operator")
    async with http.get(f"{hub.url}/api/audit", params={"recording": recorded.id}, headers=auth(operator)) as r:
        rows = await r.json()
    plays = [row for row in rows if row["action"] == "playback" and row["detail"] == seg["path"]]
    assert plays and plays[0]["user"] == "mediator-rec" and plays[0]["site_id"] == "rianxiuma"
    async with http.get(f"{hub.url}/api/audit", headers=auth(recorded.token)) as r:
        assert r.status == 403  # mediators do not read the audit log


async def test_paths_outside_the_recording_are_refused(
    hub: HubProcess, recorded: Recorded, http: aiohttp.ClientSession
):
    base = f"{hub.url}/api/recordings/{recorded.id}/files/"
    climbing = ["../../secret.key", "..%2F..%2Fsecret.key", "s1/..%2F..%2F..%2Fsecret.key", "%2E%2E/x"]
    for path in [*climbing, "%2Fetc%2Fpasswd", "%2F" + str(recorded.folder / "manifest.json")]:
        async with http.get(URL(base + path, encoded=True), headers=auth(recorded.token)) as r:
            assert r.status in (400, 404), path
            assert r.content_type == "application/problem+json", path
            assert b"secret" not in await r.read() or r.status != 200


async def test_jurisdiction(hub: HubProcess, recorded: Recorded, http: aiohttp.ClientSession):
    outsider = hub.token("op-golmud", "golmud", "operator")
    seg = recorded.manifest["streams"][0]["segments"][0]["path"]
    for path in ["", "/verify", "/export", f"/files/{seg}"]:
        async with http.get(f"{hub.url}/api/recordings/{recorded.id}{path}", headers=auth(outsider)) as r:
            assert r.status == 403, path
    async with http.get(f"{hub.url}/api/recordings", headers=auth(outsider)) as r:
        assert recorded.id not in [row["id"] for row in await r.json()]
    async with http.get(f"{hub.url}/api/recordings", params={"site": "guinan"}, headers=auth(outsider)) as r:
        assert r.status == 403
    province = hub.token("op-qinghai", "qinghai", "operator")
    async with http.get(
        f"{hub.url}/api/recordings",
        params={"site": "guomaying", "kind": "standing", "q": "rianxiuma"},
        headers=auth(province),
    ) as r:
        assert recorded.id in [row["id"] for row in await r.json()]
    async with http.get(
        f"{hub.url}/api/recordings", params={"from": "2000-01-01", "to": "2000-01-02"}, headers=auth(province)
    ) as r:
        assert recorded.id not in [row["id"] for row in await r.json()]


def test_verify_reports_the_changed_segment(hub: HubProcess, recorded: Recorded):
    def verify() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "hub", "verify", recorded.id, "--data", str(hub.data)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )

    intact = verify()
    assert intact.returncode == 0 and "intact" in intact.stdout
    # Alter a copy's byte, then put the original back: the fixture is shared.
    seg = recorded.manifest["streams"][0]["segments"][2]
    path = recorded.folder / seg["path"]
    original = path.read_bytes()
    altered = bytearray(original)
    altered[len(altered) // 2] ^= 0x01
    path.write_bytes(bytes(altered))
    try:
        changed = verify()
    finally:
        path.write_bytes(original)
    assert changed.returncode == 1
    assert seg["path"] in changed.stdout and "changed" in changed.stdout
    assert verify().returncode == 0


async def test_verify_endpoint(hub: HubProcess, recorded: Recorded, http: aiohttp.ClientSession):
    async with http.get(f"{hub.url}/api/recordings/{recorded.id}/verify", headers=auth(recorded.token)) as r:
        verdict = await r.json()
    assert verdict["intact"] is True and verdict["changed"] == [] and verdict["segments"] >= 4


async def test_export_renders_one_mp4(hub: HubProcess, recorded: Recorded, http: aiohttp.ClientSession):
    url = f"{hub.url}/api/recordings/{recorded.id}/export"
    async with http.post(url, headers=auth(recorded.token)) as r:
        assert r.status == 202, await r.text()
    for _ in range(600):
        async with http.get(url, headers=auth(recorded.token)) as r:
            job = await r.json()
        if job["state"] != "running":
            break
        await asyncio.sleep(0.2)
    assert job["state"] == "done", job
    assert job["participants"] == 1
    async with http.get(f"{url}/file", headers=auth(recorded.token)) as r:
        assert r.status == 200 and r.content_type == "video/mp4"
        data = await r.read()
    path = recorded.folder / "download.mp4"
    path.write_bytes(data)
    try:
        with av.open(str(path)) as container:
            video = container.streams.video[0]
            assert (video.codec_context.width, video.codec_context.height) == (320, 240)
            assert "participants=1" in container.metadata.get("comment", "")
            assert container.streams.audio
            seconds = container.duration / 1_000_000
            frames = sum(1 for _ in container.decode(video=0))
    finally:
        path.unlink()
    assert abs(seconds - SECONDS) <= 0.05 * SECONDS
    assert abs(frames / 15 - SECONDS) <= 0.05 * SECONDS
    json.dumps(job)


async def test_recording_is_switched_through_the_event_channel(hub: HubProcess, http: aiohttp.ClientSession):
    mediator = hub.token("m-hongzhuang-rec", "hongzhuang", "mediator")
    guest = hub.token("party-rec", "hongzhuang", "guest", room="site-hongzhuang")
    async with (
        http.ws_connect(f"{hub.url}/ws?token={mediator}") as ws,
        http.ws_connect(f"{hub.url}/ws?token={guest}") as guest_ws,
    ):
        for socket in (ws, guest_ws):
            assert (await socket.receive_json(timeout=5))["type"] == "hello"
            await socket.send_json({"type": "join", "room": "site-hongzhuang"})
            assert (await socket.receive_json(timeout=5))["type"] == "joined"

        async def next_of(socket, kinds):  # type: ignore[no-untyped-def]
            while (message := await socket.receive_json(timeout=10))["type"] not in kinds:
                pass
            return message

        await guest_ws.send_json({"type": "record", "room": "site-hongzhuang", "on": True})
        assert (await next_of(guest_ws, {"error", "ack"}))["code"] == "forbidden"
        await ws.send_json({"type": "record", "room": "site-hongzhuang", "on": True})
        assert (await next_of(ws, {"error", "ack"}))["type"] == "ack"
        # Everyone in the room is told, the guest included.
        started = await next_of(guest_ws, {"recording-started"})
        assert started["room_id"] == "site-hongzhuang"
        await ws.send_json({"type": "record", "room": "site-hongzhuang", "on": False})
        assert (await next_of(ws, {"error", "ack"}))["type"] == "ack"
        assert (await next_of(guest_ws, {"recording-stopped"}))["room_id"] == "site-hongzhuang"
        await ws.send_json({"type": "record", "room": "site-hongzhuang", "on": "yes"})
        assert (await next_of(ws, {"error", "ack"}))["code"] == "bad-message"
