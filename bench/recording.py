"""What recording one stream costs: the hub's remuxing recorder against
aiortc's `MediaRecorder`, which decodes and re-encodes, in the same run.

Setup (all media on 127.0.0.1): a hub (`python -m hub serve`) and N
publishers (`python -m hub bot publish --file`), each in its own process,
sending a VP8 640x480 30 fps file encoded beforehand (a keyframe every
second), so that no publisher competes for the CPU by encoding live. Three
windows of the same length:

1. **baseline**: the hub receives the N streams, nobody records;
2. **remux**: the room is recorded by the hub's recorder (`recorder/`);
   its cost is the hub's CPU minus the baseline;
3. **MediaRecorder**: recording is off; one more process views the N
   streams over WHEP with aiortc and writes each with `MediaRecorder` to
   WebM. Its whole CPU is the cost, which includes receiving over WebRTC
   (the hub's per-stream receive cost from the baseline is printed beside
   it for comparison).

    .venv/bin/python -m bench.recording [--streams 2] [--seconds 10]

The report (markdown) goes to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import av
import psutil
from aiortc import RTCPeerConnection
from aiortc.contrib.media import MediaRecorder

from bench.harness import ROOM, ROOT, make_source, measure, running_hub, say
from bench.machine import machine
from client import bot
from hub.media.ice import use_addresses

# -- the MediaRecorder process ----------------------------------------------------------


async def media_recorder_role(url: str, token: str, streams: list[str], out: Path, seconds: float) -> None:
    """View each stream over WHEP and record it with aiortc's MediaRecorder."""
    use_addresses(["127.0.0.1"])
    pcs, recorders = [], []
    async with aiohttp.ClientSession() as http:
        for n, stream_id in enumerate(streams):
            pc = RTCPeerConnection(bot.NO_ICE_SERVERS)
            recorder = MediaRecorder(str(out / f"mediarecorder-{n}.webm"))
            pc.addTransceiver("video", direction="recvonly")
            pc.addTransceiver("audio", direction="recvonly")
            pc.on("track", recorder.addTrack)
            await bot._exchange(http, f"{url}/whep/{stream_id}", token, pc)
            pcs.append(pc)
            recorders.append(recorder)
        for recorder in recorders:
            await recorder.start()
        print("ready", flush=True)
        await asyncio.sleep(seconds)
        for recorder in recorders:
            await recorder.stop()
        for pc in pcs:
            await pc.close()


# -- the run --------------------------------------------------------------------------


def file_stats(paths: list[Path]) -> tuple[int, float]:
    """Decodable video frames and bytes, summed over files."""
    frames, size = 0, 0
    for path in paths:
        size += path.stat().st_size
        with contextlib.suppress(av.error.FFmpegError), av.open(str(path)) as container:
            frames += sum(1 for _ in container.decode(video=0))
    return frames, size


async def run(streams: int, window: float) -> dict[str, Any]:
    info = machine()
    started = time.monotonic()
    data = Path(tempfile.mkdtemp(prefix="bench-recording-"))
    async with running_hub(data) as hub:
        url, token = hub.url, hub.token
        total = 3 * window + 30
        source = data / "source.webm"
        say(f"encoding {total:.0f} s of 640x480 VP8 for the publishers")
        await asyncio.to_thread(make_source, source, total + 5)
        hub.publish(streams, source, total)
        hub_ps = hub.psutil()
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http:
            ids = await hub.wait_for_streams(http, streams)
            await asyncio.sleep(3)  # connections settle
            say(f"baseline: {streams} streams into the hub, nobody records")
            baseline = await measure(hub_ps, window)

            say("remux: the hub's recorder records the room")
            async with http.post(f"{url}/api/rooms/{ROOM}/recording", json={"on": True}) as r:
                recording = (await r.json())["recording"]["id"]
            recording_started = time.monotonic()
            await asyncio.sleep(1)
            remux = await measure(hub_ps, window)
            async with http.post(f"{url}/api/rooms/{ROOM}/recording", json={"on": False}) as r:
                assert r.status == 200
            recorded_seconds = time.monotonic() - recording_started
            ours = sorted((data / "recordings" / recording).glob("s*/*.webm"))

            say("MediaRecorder: aiortc views each stream and re-encodes it to WebM")
            out = data / "mediarecorder"
            out.mkdir()
            viewer = subprocess.Popen(
                [sys.executable, "-m", "bench.recording", "--role", "mediarecorder", "--url", url, "--token", token]
                + ["--out", str(out), "--seconds", str(window + 6), *ids],
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
            )
            hub.children.append(viewer)
            assert viewer.stdout is not None
            await asyncio.to_thread(viewer.stdout.readline)
            await asyncio.sleep(3)  # past the first keyframes and encoder start
            mediarecorder = await measure(psutil.Process(viewer.pid), window)
            await asyncio.to_thread(viewer.wait, 60)
            theirs = sorted(out.glob("*.webm"))
        our_frames, our_bytes = file_stats(ours)
        their_frames, their_bytes = file_stats(theirs)
    return info | {
        "streams": streams,
        "window": window,
        "runtime": round(time.monotonic() - started),
        "baseline": baseline,
        "remux": remux - baseline,
        "mediarecorder": mediarecorder,
        "ours": {"files": len(ours), "frames": our_frames, "bytes": our_bytes, "seconds": recorded_seconds},
        "theirs": {"files": len(theirs), "frames": their_frames, "bytes": their_bytes, "seconds": window + 6},
    }


def report(r: dict[str, Any]) -> str:
    n = r["streams"]
    rows = [
        ("hub recorder (remux, no re-encode)", r["remux"], r["ours"]),
        ("aiortc MediaRecorder (decode + re-encode)", r["mediarecorder"], r["theirs"]),
    ]
    lines = [
        f"Machine: {r['cpu']}, {r['cores']} cores; Python {r['python']}, aiortc {r['aiortc']}, av {r['av']}; "
        f"{r['date']}; load average at start {', '.join(map(str, r['load_average_at_start']))}",
        f"Streams: {n} x VP8 640x480 30 fps (~400 kbps, video only), window {r['window']:.0f} s each; "
        f"runtime {r['runtime']} s",
        "",
        "| recorder | streams | CPU % of a core | CPU % per stream | video frames written per stream-second (30 sent) "
        "| MB written |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, cpu, files in rows:
        fps = files["frames"] / (n * files["seconds"])
        lines.append(f"| {name} | {n} | {cpu:.1f} | {cpu / n:.2f} | {fps:.1f} | {files['bytes'] / 1e6:.1f} |")
    ratio = r["mediarecorder"] / r["remux"] if r["remux"] > 0 else float("inf")
    lines += [
        "",
        f"- MediaRecorder / remux, CPU per stream: {ratio:.0f}x",
        f"- for scale: the hub receiving a stream (no recording) costs {r['baseline'] / n:.2f}% of a core; "
        "MediaRecorder's figure includes its own WebRTC receive, the remux figure is on top of the hub's",
        "- frames written per stream-second: decodable video frames in the files over the time each recorder ran; "
        "fewer than 30 means the recorder lost frames (MediaRecorder encodes in the event loop and falls behind)",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each measuring window")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--role", choices=("mediarecorder",), help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--token", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("stream_ids", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "mediarecorder":
        asyncio.run(media_recorder_role(args.url, args.token, args.stream_ids, args.out, args.seconds))
        return 0
    result = asyncio.run(run(args.streams, args.seconds))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    print(report(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
