"""A hub killed with SIGKILL in the middle of a recording leaves it playable."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
from pathlib import Path

import aiohttp

from client import bot

from .conftest import ROOT, start_hub
from .recording_helpers import ROOM, auth, decoded_seconds, set_recording


async def test_sigkill_8s_into_a_recording_leaves_5s_playable(tmp_path: Path):
    hub = start_hub(tmp_path / "hub")
    try:
        token = hub.token("mediator-crash", "guomaying", "mediator")
        video = bot.SyntheticVideo("vp8", 320, 240, 30)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
            started = await set_recording(http, hub, token, ROOM, True)
            publisher = await bot.publish(http, hub.url, token, ROOM, [video, bot.SyntheticAudio()])
            await asyncio.sleep(8)
            hub.proc.kill()
            hub.proc.wait(10)
            with contextlib.suppress(Exception):
                await publisher.close()
    finally:
        hub.stop()

    recording_id = started["recording"]["id"]
    folder = hub.data / "recordings" / recording_id
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["status"] == "recording"  # nobody finished it
    [stream] = manifest["streams"]
    on_disk = sorted((folder / stream["folder"]).glob("*.webm"))
    assert len(on_disk) > len(stream["segments"])  # the open segment is there too
    frames, seconds = decoded_seconds(folder, {"segments": [{"path": str(p.relative_to(folder))} for p in on_disk]})
    assert seconds >= 5, (frames, seconds)

    # The next start of the hub completes the manifest from what is on disk.
    hub = start_hub(hub.data)
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
            async with http.get(f"{hub.url}/api/recordings/{recording_id}", headers=auth(token)) as r:
                detail = await r.json()
        assert detail["status"] == "interrupted"
        segments = detail["streams"][0]["segments"]
        assert [s["path"] for s in segments] == [str(p.relative_to(folder)) for p in on_disk]
        assert segments[-1]["recovered"] is True
        assert sum(s["duration"] for s in segments) >= 5
    finally:
        hub.stop()
    out = subprocess.run(
        [sys.executable, "-m", "hub", "verify", recording_id, "--data", str(hub.data)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr
