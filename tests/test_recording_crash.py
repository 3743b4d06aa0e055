"""A hub killed with SIGKILL in the middle of a recording leaves it playable:
every finished segment, and the open one when it got as far as its first
cluster. The kill is timed to land either before or after that cluster."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import av
import pytest

from client import bot

from .conftest import ROOT, start_hub, wait_until
from .recording_helpers import ROOM, auth, decoded_seconds, set_recording


def decodes(path: Path) -> bool:
    """The file opens and at least one video frame decodes."""
    try:
        with av.open(str(path)) as container:
            return any(True for _ in container.decode(video=0))
    except av.error.FFmpegError:
        return False


def listed(folder: Path) -> list[dict]:
    """The finished segments the manifest of the stream lists."""
    streams = json.loads((folder / "manifest.json").read_text())["streams"]
    return streams[0]["segments"] if streams else []


def open_segment(folder: Path) -> Path | None:
    """The newest segment file the manifest does not list yet: the one being written."""
    segments = listed(folder)
    if not segments:
        return None
    files = sorted((folder / segments[0]["path"]).parent.glob("*.webm"))
    if not files or str(files[-1].relative_to(folder)) in {seg["path"] for seg in segments}:
        return None
    return files[-1]


@pytest.mark.parametrize("open_one", ["header-only", "one-cluster"])
async def test_sigkill_mid_segment_leaves_every_listed_segment_playable(tmp_path: Path, open_one: str):
    hub = start_hub(tmp_path / "hub")
    try:
        token = hub.token("mediator-crash", "guomaying", "mediator")
        video = bot.SyntheticVideo("vp8", 320, 240, 30)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
            started = await set_recording(http, hub, token, ROOM, True)
            folder = hub.data / "recordings" / started["recording"]["id"]
            publisher = await bot.publish(http, hub.url, token, ROOM, [video, bot.SyntheticAudio()])
            await wait_until(lambda: len(listed(folder)) >= 2, timeout=30)
            # A segment lasts 2 s and holds no cluster for its first second: kill inside the wanted state.
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                path = open_segment(folder)
                if path is not None and path.stat().st_size and decodes(path) == (open_one == "one-cluster"):
                    break
                await asyncio.sleep(0.02)
            else:
                pytest.fail(f"the open segment was never {open_one}")
            hub.proc.kill()
            hub.proc.wait(10)
            with contextlib.suppress(Exception):
                await publisher.close()
    finally:
        hub.stop()

    recording_id = started["recording"]["id"]
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["status"] == "recording"  # nobody finished it
    [stream] = manifest["streams"]
    on_disk = sorted((folder / stream["folder"]).glob("*.webm"))
    assert len(on_disk) > len(stream["segments"])  # the open segment is there too
    playable = [str(p.relative_to(folder)) for p in on_disk if decodes(p)]
    assert (on_disk[-1] == folder / playable[-1]) == (open_one == "one-cluster")  # the kill hit the state
    _, finished_seconds = decoded_seconds(folder, stream)

    # The next start of the hub completes the manifest from what is on disk.
    hub = start_hub(hub.data)
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
            async with http.get(f"{hub.url}/api/recordings/{recording_id}", headers=auth(token)) as r:
                detail = await r.json()
            async with http.get(f"{hub.url}/api/recordings/{recording_id}/verify", headers=auth(token)) as r:
                verdict = await r.json()
        assert detail["status"] == "interrupted"
        segments = detail["streams"][0]["segments"]
        assert [s["path"] for s in segments] == playable
        if open_one == "one-cluster":
            assert segments[-1]["recovered"] is True and "discarded" not in detail
        else:
            killed = str(on_disk[-1].relative_to(folder))
            assert [d["path"] for d in detail["discarded"]] == [killed]
            assert not any(s.get("recovered") for s in segments)
        # Every finished segment still plays, and the open one adds what reached the disk.
        _, seconds = decoded_seconds(folder, {"segments": segments})
        assert seconds >= finished_seconds + (0.9 if open_one == "one-cluster" else 0), (seconds, finished_seconds)
        assert finished_seconds >= 3.5
        assert verdict["intact"] is True and verdict["unplayable"] == {}, verdict
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
