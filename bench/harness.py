"""What the hub benchmarks share: a hub process (`python -m hub serve`) on
loopback with N file publishers (`python -m hub bot publish --file`), each
in its own process, and measuring a process's CPU.

The publishers send a VP8 640x480 30 fps file encoded beforehand (a
keyframe every second), so that no publisher competes for the CPU by
encoding live.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import av
import psutil

from bench.machine import free_port
from client import bot

ROOT = Path(__file__).resolve().parent.parent
ROOM = "site-rianxiuma"
LOOPBACK = '["127.0.0.1"]'


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def cli(data: Path, *args: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "hub", *args, "--data", str(data)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return out.stdout.strip()


def cpu_seconds(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return times.user + times.system + times.children_user + times.children_system


async def measure(proc: psutil.Process, seconds: float) -> float:
    """Percent of one core the process used over the next `seconds`."""
    before, start = cpu_seconds(proc), time.monotonic()
    await asyncio.sleep(seconds)
    return 100 * (cpu_seconds(proc) - before) / (time.monotonic() - start)


#: Frames a second of the stream every publisher sends.
FPS = 30


def make_source(path: Path, seconds: float) -> None:
    """The stream every publisher sends: the test pattern, VP8, keyframe every second."""
    with av.open(str(path), "w", format="webm") as out:
        stream = out.add_stream("libvpx", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = 640, 480, "yuv420p"
        stream.bit_rate = 400_000
        stream.time_base = stream.codec_context.time_base = fractions.Fraction(1, FPS)
        stream.codec_context.gop_size = FPS
        stream.options = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0"}
        for index in range(int(seconds * FPS)):
            frame = av.VideoFrame.from_ndarray(bot.pattern_image(640, 480, index), format="rgb24")
            frame = frame.reformat(format="yuv420p")
            frame.pts = index
            frame.time_base = fractions.Fraction(1, FPS)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))


@dataclass
class BenchHub:
    """A running hub process and an operator's token for it."""

    data: Path
    url: str
    token: str
    process: subprocess.Popen[bytes]
    #: Processes stopped (newest first) when the hub's context ends: the hub, its publishers, and what else is added.
    children: list[subprocess.Popen[bytes]] = field(default_factory=list)
    #: The publishers started so far, and their logs.
    publishers: list[tuple[subprocess.Popen[bytes], Path]] = field(default_factory=list)

    def psutil(self) -> psutil.Process:
        return psutil.Process(self.process.pid)

    def publish(self, streams: int, source: Path, seconds: float) -> None:
        """Start `streams` publisher processes sending `source` into ROOM for `seconds`,
        each with its log in data/publisher-N.log."""
        for _ in range(streams):
            path = self.data / f"publisher-{len(self.publishers) + 1}.log"
            with path.open("wb") as log:
                process = subprocess.Popen(
                    [sys.executable, "-m", "hub", "bot", "publish", "--url", self.url, "--token", self.token]
                    + ["--room", ROOM, "--seconds", str(seconds), "--ice-address", "127.0.0.1", "--file", str(source)],
                    cwd=ROOT,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            self.children.append(process)
            self.publishers.append((process, path))

    async def wait_for_streams(self, http: aiohttp.ClientSession, streams: int) -> list[str]:
        """The ids of ROOM's streams once there are `streams` of them (a minute at most)."""
        for _ in range(300):
            async with http.get(f"{self.url}/api/rooms/{ROOM}") as r:
                ids = [s["id"] for s in (await r.json())["streams"]]
            if len(ids) == streams:
                return ids
            await asyncio.sleep(0.2)
        # What the publishers that gave up said: the last line of each one's log.
        said = [
            f"{path.name}: {(path.read_text(errors='replace').strip().splitlines() or ['(nothing)'])[-1]}"
            for process, path in self.publishers
            if process.poll() is not None
        ]
        raise RuntimeError(f"{len(ids)} of {streams} publishers connected; {'; '.join(said) or 'none has exited'}")


@contextlib.asynccontextmanager
async def running_hub(
    data: Path, env: dict[str, str] | None = None, operator_site: str = "guomaying"
) -> AsyncIterator[BenchHub]:
    """A hub serving `data` on a free loopback port (ICE on 127.0.0.1 only),
    its log in data/hub.log, with an operator token of `operator_site`; it
    and every child are stopped on exit."""
    port = free_port()
    log = (data / "hub.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "hub", "serve", "--port", str(port), "--data", str(data)],
        cwd=ROOT,
        env=os.environ | {"HUB_ICE_ADDRESSES": LOOPBACK} | (env or {}),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    hub = BenchHub(data, f"http://127.0.0.1:{port}", "", process, [process])
    try:
        for _ in range(200):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            await asyncio.sleep(0.1)
        hub.token = cli(data, "token", "--user", "bench", "--site", operator_site, "--role", "operator")
        yield hub
    finally:
        for child in reversed(hub.children):
            if child.poll() is None:
                child.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    child.wait(10)
        log.close()
