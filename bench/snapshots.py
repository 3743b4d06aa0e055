"""What snapshots cost: CPU per snapshot, CPU for 100 monitored feeds, and
the bitrate a periodic keyframe request adds to a publisher's stream.

1. **Per snapshot** (in this process, no hub): keyframes of the synthetic
   test pattern (`client.bot.SyntheticVideo`, VP8 and H.264, 640x480 and
   1280x720, ~400 kbps / ~1.2 Mbps) go through `hub.monitoring.snapshots.render`: decode
   that one frame (PyAV), shrink it to 320 px and encode a JPEG (OpenCV), and
   measure it for the health diagnostics. CPU time (all threads) per
   snapshot, and the decode and health shares of it. The picture is
   camera-like: a still, textured scene with one small moving object (a test
   pattern moving everywhere would make every delta frame as costly as a
   keyframe and hide what keyframes cost).
2. **Monitored feeds** (a real hub, `python -m hub serve`): N publisher
   processes (`python -m hub bot publish --file`, VP8 640x480 30 fps, a
   keyframe every second, so that publishers do not encode live) send into
   one hub; the hub's CPU is measured over a window with snapshots off
   (HUB_SNAPSHOT_SECONDS=0), at the default period (10 s) and at 1 s. The
   1 s run takes as many snapshots per second as 10N feeds at the default
   period, so for N=10 it *measures* the snapshot work of 100 feeds; the 10 s
   run, per feed and times 100, *projects* it.
3. **Publisher side**: a keyframe asked for every period costs the
   publisher its size minus the delta frame it replaces, once a period
   (an upper bound: rate control pays the bits back over the next frames).

    .venv/bin/python -m bench.snapshots [--streams 10] [--seconds 30]

The report (markdown) goes to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import av
import cv2
import numpy as np

from bench.harness import make_source, measure, running_hub, say
from bench.machine import machine
from client.bot import SyntheticVideo, pattern_image
from hub.monitoring.health import measure as health_measure
from hub.monitoring.snapshots import DECODERS, render

DEFAULT_PERIOD = 10.0
SIZES = ((640, 480, 400_000), (1280, 720, 1_200_000))


# -- 1. CPU per snapshot, and 3. keyframe size -----------------------------------------------


def camera_scene(width: int, height: int, index: int) -> np.ndarray:
    """A still textured scene (one frame of the test pattern) with a white square walking across it."""
    img = pattern_image(width, height, 0)
    side = height // 8
    x = index * 4 % (width - side)
    img[height // 2 : height // 2 + side, x : x + side] = 255
    return img


async def encoded_frames(
    codec: str, width: int, height: int, bitrate: int, rounds: int
) -> tuple[list[bytes], list[int]]:
    """`rounds` keyframes of the live test pattern, each asked for as the hub
    asks, and the sizes of the delta frames between them (a second each)."""
    video = SyntheticVideo(codec, width, height, bitrate=bitrate, picture=camera_scene)
    keyframes, deltas = [], []
    for _ in range(rounds):
        video.request_keyframe()
        keyframes.append(bytes(await video.recv()))
        for _ in range(29):
            deltas.append(len(bytes(await video.recv())))
    video.stop()
    return keyframes[1:], deltas  # the first keyframe is the encoder's start, larger than the rest


def cpu_per_snapshot(mime_type: str, keyframes: list[bytes], repeat: int) -> dict[str, float]:
    """Milliseconds of CPU (all threads of this process) per snapshot, and of its parts."""
    # Warm up: first use of a codec loads and initialises it.
    render(mime_type, keyframes[0])

    def per_call(work: Any) -> float:
        start = time.process_time()
        for _ in range(repeat):
            for frame in keyframes:
                work(frame)
        return 1000 * (time.process_time() - start) / (repeat * len(keyframes))

    def decode(frame: bytes) -> None:
        decoder = av.CodecContext.create(DECODERS[mime_type], "r")
        decoder.decode(av.Packet(frame))
        decoder.decode(None)

    # The health step measures the 320-pixel picture; the JPEG decoded back is one of that size.
    picture = cv2.imdecode(np.frombuffer(render(mime_type, keyframes[0]).jpeg, np.uint8), cv2.IMREAD_COLOR)
    return {
        "total": per_call(lambda frame: render(mime_type, frame)),
        "decode": per_call(decode),
        "health": per_call(lambda frame: health_measure(picture)),
    }


async def per_snapshot(rounds: int, repeat: int) -> list[dict[str, Any]]:
    rows = []
    for codec, mime_type in (("vp8", "video/vp8"), ("h264", "video/h264")):
        for width, height, bitrate in SIZES:
            say(f"per snapshot: {codec} {width}x{height}")
            keyframes, deltas = await encoded_frames(codec, width, height, bitrate, rounds)
            cpu = await asyncio.to_thread(cpu_per_snapshot, mime_type, keyframes, repeat)
            rows.append(
                {
                    "codec": codec,
                    "size": f"{width}x{height}",
                    "bitrate": bitrate,
                    "keyframe_bytes": statistics.mean(len(k) for k in keyframes),
                    "delta_bytes": statistics.mean(deltas),
                    "jpeg_bytes": len(render(mime_type, keyframes[0]).jpeg),
                }
                | {f"ms_{k}": v for k, v in cpu.items()}
            )
    return rows


# -- 2. a hub monitoring N feeds ----------------------------------------------------------


async def hub_cpu(streams: int, period: float, window: float, source: Path) -> dict[str, Any]:
    """CPU of a hub receiving `streams` feeds, snapshotting each every `period` s (0: off)."""
    data = Path(tempfile.mkdtemp(prefix="bench-snapshots-"))
    async with running_hub(data, {"HUB_SNAPSHOT_SECONDS": str(period)}) as hub:
        hub.publish(streams, source, window + 30)
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {hub.token}"}) as http:
            await hub.wait_for_streams(http, streams)
            # Count the snapshots taken in the window from their events (by their time: the
            # socket may deliver some late).
            async with http.ws_connect(f"{hub.url}/ws?token={hub.token}") as ws:
                await ws.send_json({"type": "monitor", "on": True})
                seen: list[float] = []
                reader = asyncio.create_task(_snapshot_events(ws, seen))
                await asyncio.sleep(5)  # connections settle, first snapshots taken
                start = time.time()
                cpu = await measure(hub.psutil(), window)
                end = time.time()
                await asyncio.sleep(1)
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reader
    taken = sum(1 for at in seen if start <= at < end)
    return {"period": period, "streams": streams, "cpu": cpu, "snapshots": taken, "window": end - start}


async def _snapshot_events(ws: aiohttp.ClientWebSocketResponse, seen: list[float]) -> None:
    async for msg in ws:
        event = json.loads(msg.data)
        if event.get("type") == "snapshot":
            seen.append(event["at"])


# -- the report -------------------------------------------------------------------------


def report(r: dict[str, Any]) -> str:
    lines = [
        f"Machine: {r['cpu']}, {r['cores']} cores; Python {r['python']}, aiortc {r['aiortc']}, av {r['av']}; "
        f"{r['date']}; load average at start {', '.join(map(str, r['load_average_at_start']))}; "
        f"runtime {r['runtime']} s",
        "",
        "Per snapshot (one keyframe decoded, shrunk to 320 px, JPEG quality 70, health measures), "
        "CPU of all threads, measured:",
        "",
        "| codec | size | stream kbps | CPU ms per snapshot | of which decode | of which health | JPEG bytes "
        "| keyframe bytes | delta frame bytes | keyframe every 10 s adds |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in r["per_snapshot"]:
        extra = (row["keyframe_bytes"] - row["delta_bytes"]) * 8 / DEFAULT_PERIOD / 1000
        lines.append(
            f"| {row['codec']} | {row['size']} | {row['bitrate'] // 1000} | {row['ms_total']:.1f} "
            f"| {row['ms_decode']:.1f} | {row['ms_health']:.2f} | {row['jpeg_bytes']} "
            f"| {row['keyframe_bytes']:.0f} | {row['delta_bytes']:.0f} "
            f"| {extra:.1f} kbps ({100 * extra * 1000 / row['bitrate']:.1f} %) |"
        )
    runs = {run["period"]: run for run in r["hub"]}
    off, default, fast = runs[0.0], runs[DEFAULT_PERIOD], runs[1.0]
    n = off["streams"]
    per_feed = (default["cpu"] - off["cpu"]) / n
    lines += [
        "",
        f"A hub receiving {n} feeds (VP8 640x480 30 fps, file publishers, a keyframe every second), "
        f"CPU over {off['window']:.0f} s windows:",
        "",
        "| snapshots | feeds | snapshots taken per s | hub CPU % of a core | snapshot share % of a core "
        "| hub CPU ms per snapshot | basis |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
        f"| off | {n} | 0 | {off['cpu']:.1f} | - | - | measured |",
    ]
    for run, label in ((default, f"every {DEFAULT_PERIOD:.0f} s (default)"), (fast, "every 1 s")):
        rate = run["snapshots"] / run["window"]
        share = run["cpu"] - off["cpu"]
        lines.append(
            f"| {label} | {n} | {rate:.1f} | {run['cpu']:.1f} | {share:.1f} | {10 * share / rate:.1f} | measured |"
        )
    fast_rate = fast["snapshots"] / fast["window"]
    fast_ms = 10 * (fast["cpu"] - off["cpu"]) / fast_rate
    vp8 = next(row for row in r["per_snapshot"] if row["codec"] == "vp8" and row["size"] == "640x480")
    lines += [
        f"| every {DEFAULT_PERIOD:.0f} s (default) | 100 | 10.0 | - | {fast_ms:.1f} | {fast_ms:.1f} "
        "| projected: the 1 s run's hub CPU per snapshot x 10 snapshots/s |",
        f"| every {DEFAULT_PERIOD:.0f} s (default) | 100 | 10.0 | - | {vp8['ms_total']:.1f} | {vp8['ms_total']:.1f} "
        "| projected: VP8 640x480 CPU per snapshot (first table) x 10 snapshots/s |",
        "",
        f"- the 1 s run takes as many snapshots per second as {10 * fast_rate:.0f} feeds at the default period"
        + (
            f" (fewer than {10 * n}: these publishers ignore keyframe requests, so a snapshot may wait for the "
            "next keyframe of the file, up to a second)"
            if round(10 * fast_rate) < 10 * n
            else ""
        )
        + f": its share is that snapshot work, measured; {n} feeds at the "
        f"default period ({per_feed:.2f} % of a core per feed measured) cost less than the run-to-run "
        "noise of a hub's CPU on a shared machine (about 1 % of a core), so that row says little",
        "- snapshot share: hub CPU minus the same hub with snapshots off; it includes catching the keyframe's "
        "packets, the worker thread's decode + JPEG + health, and the live-state writes and events",
        "- 100 feeds at the default period are 10 snapshots per second; receiving 100 feeds is the forwarding "
        "path's cost (see the forwarding benchmark), not counted here",
        "- 'keyframe every 10 s adds': (keyframe - delta frame) bytes once a period; an upper bound, as the "
        "encoder's rate control pays the bits back over the following frames",
    ]
    return "\n".join(lines)


async def run(streams: int, window: float, rounds: int, repeat: int) -> dict[str, Any]:
    info = machine()
    started = time.monotonic()
    rows = await per_snapshot(rounds, repeat)
    source = Path(tempfile.mkdtemp(prefix="bench-snapshots-src-")) / "source.webm"
    say("encoding the publishers' file")
    await asyncio.to_thread(make_source, source, window + 30)
    hub = []
    for period in (0.0, DEFAULT_PERIOD, 1.0):
        say(f"hub with {streams} feeds, snapshots every {period} s (0: off)")
        hub.append(await hub_cpu(streams, period, window, source))
    return info | {"runtime": round(time.monotonic() - started), "per_snapshot": rows, "hub": hub}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=10, help="feeds sent into the hub")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each hub measuring window")
    parser.add_argument("--keyframes", type=int, default=6, help="keyframes per codec and size (a second each)")
    parser.add_argument("--repeat", type=int, default=5, help="times each keyframe is rendered")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    result = asyncio.run(run(args.streams, args.seconds, args.keyframes + 1, args.repeat))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    print(report(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
