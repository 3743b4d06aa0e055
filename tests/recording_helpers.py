"""Shared by the recording tests: record a WHIP-published session, read it back."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import av

from client import bot
from hub.media.annexb import join_nal_units

from .conftest import HubProcess, wait_until

ROOM = "site-rianxiuma"  # a village under guomaying township, guinan county


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def call(http: aiohttp.ClientSession, method: str, url: str, token: str, **kw: Any) -> tuple[int, Any]:
    """A request with the token: its status and body (JSON decoded, else bytes)."""
    async with http.request(method, url, headers=auth(token), **kw) as r:
        body = await r.json(content_type=None) if r.content_type.endswith("json") else await r.read()
        return r.status, body


async def set_recording(http: aiohttp.ClientSession, hub: HubProcess, token: str, room: str, on: bool) -> dict:
    async with http.post(f"{hub.url}/api/rooms/{room}/recording", json={"on": on}, headers=auth(token)) as r:
        assert r.status == 200, await r.text()
        return await r.json()


@dataclass
class Recorded:
    id: str
    folder: Path
    manifest: dict[str, Any]
    video: bot.SyntheticVideo
    token: str


async def record(
    hub: HubProcess,
    seconds: float,
    room: str = ROOM,
    audio: bool = True,
    codec: str = "vp8",
    name: str | None = None,
    folder: Path | None = None,
) -> Recorded:
    """Record `seconds` of a 320x240 30 fps VP8 or H.264 (+ Opus) stream published over WHIP
    by a mediator whose display name is `name` (else the account name), into the hub's
    recordings directory (`folder` if it has another: HUB_SHARED_MEDIA)."""
    token = hub.token("mediator-rec", "guomaying", "mediator", name=name)
    video = bot.SyntheticVideo(codec, 320, 240, 30, frames=int(seconds * 30))
    tracks: list[bot.EncodedTrack] = [video] + ([bot.SyntheticAudio(frames=int(seconds * 50))] if audio else [])
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        started = await set_recording(http, hub, token, room, True)
        publisher = await bot.publish(http, hub.url, token, room, tracks)
        try:
            await wait_until(lambda: video.readyState == "ended", timeout=seconds + 60)
            await asyncio.sleep(0.5)  # the last frames in flight
        finally:
            await set_recording(http, hub, token, room, False)
            await publisher.close()
    recording_id = started["recording"]["id"]
    folder = (folder or hub.data / "recordings") / recording_id
    return Recorded(recording_id, folder, json.loads((folder / "manifest.json").read_text()), video, token)


def video_packets(folder: Path, stream: dict[str, Any], codec: str = "vp8") -> list[tuple[bytes, bool]]:
    """(bytes, keyframe) of every video packet of a stream's segments, in order.

    Matroska stores H.264 NAL units with 4-byte lengths (and the SPS/PPS also
    in the track header); they are turned back into Annex B start codes, the
    form `bot.frame_key` compares.
    """
    out = []
    for seg in stream["segments"]:
        with av.open(str(folder / seg["path"])) as container:
            assert container.streams.video[0].codec_context.name == codec
            for p in container.demux(video=0):
                if p.size:
                    data = bytes(p)
                    out.append((annex_b(data) if codec == "h264" else data, bool(p.is_keyframe)))
    return out


def annex_b(data: bytes) -> bytes:
    nals, pos = [], 0
    while pos + 4 <= len(data):
        size = int.from_bytes(data[pos : pos + 4], "big")
        nals.append(data[pos + 4 : pos + 4 + size])
        pos += 4 + size
    return join_nal_units(nals)


def decoded_seconds(folder: Path, stream: dict[str, Any]) -> tuple[int, float]:
    """Frames that decode and the media time they cover, over all segments."""
    frames, seconds = 0, 0.0
    for seg in stream["segments"]:
        last = 0.0
        try:
            with av.open(str(folder / seg["path"])) as container:
                for frame in container.decode(video=0):
                    frames += 1
                    last = float(frame.pts * frame.time_base) + 1 / 30
        except av.error.FFmpegError:
            pass  # a truncated file decodes up to where it was cut
        seconds += last
    return frames, seconds
