"""What forwarding one published stream to N viewers costs, measured end to end.

For each stream (VP8 30 fps: 640x480 at 400 kbps, 1280x720 at 1.5 Mbps) and
each N the benchmark runs these setups, each in fresh processes:

* **hub**: `python -m hub serve`, one publisher (`client.bot.publish`, the
  synthetic pattern) and N viewers (`client.bot.view`) spread over worker
  processes. The hub forwards RTP packets without decoding, once per send
  path (HUB_FORWARD=c and python, `--paths`). After the window the
  publisher pauses: the hub's CPU at 0 packets/s is its per-viewer upkeep
  (RTCP, ICE consent), apart from the per-packet cost.
* **relay**: a minimal WHIP/WHEP server written below (`--role relay`) that
  decodes the stream once and re-encodes it for every viewer through aiortc's
  `MediaRelay` - what aiortc's own examples do.

Next to either, one more viewer takes the publisher's packets over a direct
aiortc link, with no server in between; the difference in latency is what the
server adds. After the window a late joiner measures time to first keyframe.

The floor, measured in this process in the same run for each stream's mean
packet size: a bare Python loop of SRTP protect (pylibsrtp, the profile
aiortc negotiates) + `sendto` to drained loopback sockets, one per viewer,
and the same loop compiled (`hub.media._fastsend.send`, one call per packet
for all viewers: the c path's own send step); then both again paced at the
stream's packet rate to sockets read by other processes asleep in epoll, as
the viewers' are (each packet then runs cold, as in the hub), and the hub's
own c path that way too. `--paths c` is refused where `_fastsend` is not
built, so no row says "c" for Python. `--floor-only` prints just the
in-process floor lines (a few seconds; with `--floor-rate N` the paced ones
too, at N packets/s).

Run from the repository root (all media stays on 127.0.0.1):

    .venv/bin/python -m bench.forwarding --quick
    .venv/bin/python -m bench.forwarding --viewers 1,8,16,32 --seconds 10 --json bench.json
    .venv/bin/python -m bench.forwarding --modes hub --viewers 1,16,32 --seconds 8

The report (a markdown table) goes to stdout, progress to stderr. The same
file runs every child process: `--role publisher|viewers|relay` (internal).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import math
import os
import secrets
import selectors
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import av
import psutil
from aiohttp import web
from aioice.ice import StunProtocol
from aiortc import (
    RTCCertificate,
    RTCConfiguration,
    RTCDtlsTransport,
    RTCIceGatherer,
    RTCIceTransport,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc.contrib.media import MediaRelay
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtcdtlstransport import SRTP_PROFILES
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RtpPacket
from pylibsrtp import Policy, Session

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python bench/forwarding.py` puts bench/, not the repository, on the path
    sys.path.insert(0, str(ROOT))

from bench.machine import cpu_seconds, free_port, machine  # noqa: E402
from client import bot  # noqa: E402
from hub.media import door, forward  # noqa: E402
from hub.media.forward import offered_codecs, restrict_codecs  # noqa: E402
from hub.media.ice import use_addresses  # noqa: E402

LOOPBACK = ["127.0.0.1"]
ROOM = "site-qinghai"
FPS = 30


@dataclass(frozen=True)
class Stream:
    width: int
    height: int
    bitrate: int

    @property
    def label(self) -> str:
        return f"{self.height}p {self.bitrate // 1000} kbps"


#: --streams names: what a console tile and a full-screen viewer are sent.
STREAMS = {"400k": Stream(640, 480, 400_000), "1500k": Stream(1280, 720, 1_500_000)}
#: Worker reports carry every frame digest of up to 8 viewers on one line.
LINE_LIMIT = 64 * 1024 * 1024
#: Frames still in flight when the window closes get this long to arrive.
DRAIN_SECONDS = 1.0
CONNECT_TIMEOUT = 30.0


class BenchError(Exception):
    """A step of the benchmark failed; the message says which and why."""


# == shared helpers ============================================================


def percentile(values: list[float], p: float) -> float | None:
    """Nearest-rank percentile: always one of the measured values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def pattern_index(frame: av.VideoFrame) -> int:
    """The frame number `client.bot.pattern_image` draws as 16 black/white blocks.

    It survives a decode and re-encode, so it identifies a frame the relay
    re-encoded, whose digest no longer matches anything the publisher sent.
    """
    luma = frame.to_ndarray(format="gray")
    block = max(4, frame.width // 32)
    row = luma[block // 2]
    return sum(1 << bit for bit in range(16) if row[bit * block + block // 2] > 128)


def vp8_only(pc: RTCPeerConnection) -> None:
    """Answer with VP8: the packets (or the relay's encoder) are VP8 whatever the offer lists first."""
    for transceiver in pc.getTransceivers():
        codec = next((c for c in offered_codecs(transceiver) if c.mimeType.lower() == "video/vp8"), None)
        if codec is None:
            raise web.HTTPUnsupportedMediaType(text="this benchmark server only speaks VP8")
        restrict_codecs(transceiver, codec)


async def wait_for_state(pc: RTCPeerConnection, state: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while pc.connectionState != state:
        if pc.connectionState in ("failed", "closed") or time.monotonic() > deadline:
            raise BenchError(f"peer connection is {pc.connectionState}, not {state}, after {timeout:.0f} s")
        await asyncio.sleep(0.05)


async def outbound_stats(sender: RTCRtpSender) -> tuple[int, int]:
    for stats in (await sender.getStats()).values():
        if stats.type == "outbound-rtp":
            return stats.packetsSent, stats.bytesSent
    return 0, 0


# == child side: one JSON object per line, commands on stdin, events on stdout ==


class Control:
    """The orchestrator's end of a child process.

    stdin reaching EOF means the orchestrator is gone: the child then ends,
    so a killed benchmark leaves nothing running.
    """

    def __init__(self) -> None:
        self._reader = asyncio.StreamReader(limit=LINE_LIMIT)

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(self._reader), sys.stdin)

    async def next(self) -> dict[str, Any]:
        line = await self._reader.readline()
        if not line:
            raise EOFError
        message: dict[str, Any] = json.loads(line)
        return message

    @staticmethod
    def emit(event: str, **data: Any) -> None:
        sys.stdout.write(json.dumps({"event": event, **data}) + "\n")
        sys.stdout.flush()


# -- publisher -----------------------------------------------------------------


class TeeVideo(bot.SyntheticVideo):
    """The synthetic pattern, each encoded packet also handed to copy tracks.

    aiortc's sender pulls frames with recv(), so one track cannot feed two
    senders; copies let the direct link send the very packets the server gets,
    whose digests are in the same `sent` map.
    """

    def __init__(self, stream: Stream) -> None:
        super().__init__("vp8", stream.width, stream.height, FPS, bitrate=stream.bitrate)
        self.copies: set[asyncio.Queue[av.Packet]] = set()
        self._due: float | None = None
        #: Cleared while the hub's idle upkeep is measured: no packets at all.
        self.flowing = asyncio.Event()
        self.flowing.set()

    async def recv(self) -> av.Packet:  # type: ignore[override]
        # EncodedTrack catches up on a missed schedule with back-to-back
        # encodes and never suspends meanwhile (nor does aiortc's send path):
        # on a busy machine that starved this whole process for seconds.
        # Pacing here always yields and lets a late frame slip instead of
        # bursting, so the base class then never needs to wait.
        await self.flowing.wait()
        now = time.monotonic()
        due = now if self._due is None or self._due < now - 1 / FPS else self._due
        await asyncio.sleep(max(0.0, due - now))
        self._due = due + 1 / FPS
        packet = await super().recv()
        for queue in self.copies:
            with contextlib.suppress(asyncio.QueueFull):  # a stalled copy loses packets, never stalls the original
                queue.put_nowait(packet)
        return packet


class CopyTrack(MediaStreamTrack):
    kind = "video"

    def __init__(self, tee: TeeVideo) -> None:
        super().__init__()
        self._tee = tee
        self._queue: asyncio.Queue[av.Packet] = asyncio.Queue(maxsize=2 * FPS)
        tee.copies.add(self._queue)

    async def recv(self) -> av.Packet:  # type: ignore[override]
        if self.readyState != "live":
            raise MediaStreamError
        return await self._queue.get()

    def stop(self) -> None:
        self._tee.copies.discard(self._queue)
        super().stop()


class SdpServer:
    """A bare aiohttp server on 127.0.0.1 for WHIP/WHEP-style POSTs; no auth."""

    def __init__(self) -> None:
        self.app = web.Application()
        self.pcs: dict[str, RTCPeerConnection] = {}
        self.url = ""
        self._runner: web.AppRunner | None = None
        self.on_close: dict[str, Callable[[], None]] = {}

    async def start(self, port: int = 0) -> None:
        self.app.router.add_get("/healthz", self._health)
        self.app.router.add_delete("/{kind}/{stream}/{session}", self._delete)
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        sock = socket.socket()
        sock.bind(("127.0.0.1", port))
        await web.SockSite(self._runner, sock).start()
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"

    async def answer(
        self, request: web.Request, setup: Callable[[RTCPeerConnection, str], None], on_close: Callable[[], None]
    ) -> web.Response:
        # No STUN server: aiortc's default (Google's) is of no use on loopback.
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        session = secrets.token_hex(6)
        self.pcs[session] = pc
        self.on_close[session] = on_close
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=await request.text(), type="offer"))
            vp8_only(pc)
            setup(pc, session)
            await pc.setLocalDescription(await pc.createAnswer())
        except BaseException:
            await self.close_session(session)
            raise
        location = f"{request.path}/{session}"
        return web.Response(
            status=201, text=pc.localDescription.sdp, content_type="application/sdp", headers={"Location": location}
        )

    async def close_session(self, session: str) -> bool:
        pc = self.pcs.pop(session, None)
        self.on_close.pop(session, lambda: None)()
        if pc is None:
            return False
        await pc.close()
        return True

    async def _delete(self, request: web.Request) -> web.Response:
        return web.Response(status=200 if await self.close_session(request.match_info["session"]) else 404)

    async def _health(self, _: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def close(self) -> None:
        for session in tuple(self.pcs):
            with contextlib.suppress(Exception):
                await self.close_session(session)
        if self._runner is not None:
            await self._runner.cleanup()


def direct_server(tee: TeeVideo) -> SdpServer:
    """POST /whep/direct: a viewer gets the publisher's packets with no server in between."""
    server = SdpServer()

    async def whep(request: web.Request) -> web.Response:
        copy = CopyTrack(tee)

        def setup(pc: RTCPeerConnection, _: str) -> None:
            sender = pc.addTrack(copy)
            # The viewer's PLI has to reach the encoder, as in client.bot.publish.
            sender._send_keyframe = tee.request_keyframe  # type: ignore[method-assign]
            tee.request_keyframe()

        return await server.answer(request, setup, copy.stop)

    server.app.router.add_post("/whep/{stream}", whep)
    return server


async def publisher_role(ctl: Control) -> None:
    cmd = await ctl.next()
    tee = TeeVideo(Stream(**cmd["stream"]))
    direct = direct_server(tee)
    async with aiohttp.ClientSession() as http, contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(direct.close)
        await direct.start()
        session = await bot.publish(http, cmd["url"], cmd["token"], cmd["room"], [tee], ice_servers=[])
        try:
            await wait_for_state(session.pc, "connected", CONNECT_TIMEOUT)
            sender = session.pc.getSenders()[0]
            while (await outbound_stats(sender))[0] == 0:
                await asyncio.sleep(0.05)
            ctl.emit("published", stream=session.resource_id, direct_url=direct.url)
            while True:
                cmd = await ctl.next()
                if cmd["cmd"] == "mark":
                    packets, octets = await outbound_stats(sender)
                    ctl.emit("mark", t=time.monotonic(), packets=packets, bytes=octets)
                elif cmd["cmd"] == "sent":
                    since = cmd["since"]
                    frames = [[k.hex(), f.index, f.sent_at] for k, f in tee.sent.items() if f.sent_at >= since]
                    ctl.emit("sent", frames=frames)
                elif cmd["cmd"] == "pause":
                    tee.flowing.clear()
                    ctl.emit("paused")
                elif cmd["cmd"] == "resume":
                    tee.flowing.set()
                    ctl.emit("resumed")
                elif cmd["cmd"] == "stop":
                    break
        finally:
            tee.flowing.set()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(session.close(), 5)
            tee.stop()
    ctl.emit("stopped")


# -- viewers -------------------------------------------------------------------


class _ArrivalQueue(bot._RecordingQueue):
    """bot's recording decoder queue, also noting when each RTP timestamp's
    frame arrived, so that a decoded picture can be traced back to it."""

    def __init__(self, log: bot.TrackLog, arrivals: dict[int, float]) -> None:
        super().__init__(log, decode=True)
        self._frames = log.frames
        self._arrivals = arrivals

    def put(self, item, block=True, timeout=None):  # type: ignore[no-untyped-def]
        super().put(item, block, timeout)
        if item is not None:
            self._arrivals[item[1].timestamp] = self._frames[-1].received_at


@dataclass
class Viewer:
    session: bot.Session
    probe: list[tuple[int, float]] = field(default_factory=list)  # (frame number in the picture, arrival)
    task: asyncio.Task[None] | None = None

    @property
    def log(self) -> bot.TrackLog:
        return self.session.logs["video"]

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
        await self.session.close()


async def open_viewer(http: aiohttp.ClientSession, cmd: dict[str, Any], probe: bool) -> Viewer:
    # Loopback only: no STUN/TURN servers (the bare reference servers have no /api/ice-servers).
    session = await bot.view(
        http, cmd["url"], cmd["token"], cmd["stream"], kinds=("video",), decode=probe, ice_servers=[]
    )
    viewer = Viewer(session)
    if probe:
        # Decoding is only needed to read frame numbers; one viewer per run pays for it.
        receiver = session.pc.getTransceivers()[0].receiver
        arrivals: dict[int, float] = {}
        # Safe to swap here: aiortc hands the queue to its decoder thread only once DTLS is up.
        receiver._RTCRtpReceiver__decoder_queue = _ArrivalQueue(viewer.log, arrivals)  # type: ignore[attr-defined]
        viewer.task = asyncio.create_task(read_frame_numbers(receiver.track, arrivals, viewer.probe))
    return viewer


async def read_frame_numbers(track: MediaStreamTrack, arrivals: dict[int, float], out: list[tuple[int, float]]) -> None:
    with contextlib.suppress(MediaStreamError):
        while True:
            frame = await track.recv()
            arrived = arrivals.pop(frame.pts, None)
            if arrived is not None:
                out.append((pattern_index(frame), arrived))


async def wait_keyframes(viewers: list[Viewer], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while any(v.log.first_keyframe_at is None for v in viewers) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)


async def inbound_packets(viewer: Viewer) -> int:
    stats = await viewer.session.pc.getTransceivers()[0].receiver.getStats()
    return sum(s.packetsReceived for s in stats.values() if s.type == "inbound-rtp")


async def viewers_role(ctl: Control) -> None:
    cmd = await ctl.next()
    async with aiohttp.ClientSession() as http:
        viewers: list[Viewer] = []
        try:
            opened = await asyncio.gather(
                *(open_viewer(http, cmd, cmd["probe"] and i == 0) for i in range(cmd["count"])),
                return_exceptions=True,
            )
            viewers = [v for v in opened if isinstance(v, Viewer)]
            failed = [repr(e) for e in opened if isinstance(e, BaseException)]
            if failed:
                raise BenchError(f"{len(failed)} of {cmd['count']} viewers failed to connect: {failed[0]}")
            await wait_keyframes(viewers, CONNECT_TIMEOUT)
            ctl.emit("connected", without_keyframe=sum(v.log.first_keyframe_at is None for v in viewers))
            while True:
                cmd = await ctl.next()
                if cmd["cmd"] == "mark":
                    ctl.emit("mark", t=time.monotonic(), packets=[await inbound_packets(v) for v in viewers])
                elif cmd["cmd"] == "report":
                    since = cmd["since"]
                    ctl.emit(
                        "report",
                        frames=[
                            [[f.key.hex(), f.received_at, f.size] for f in v.log.frames if f.received_at >= since]
                            for v in viewers
                        ],
                        probe=[[i, t] for v in viewers for i, t in v.probe if t >= since],
                    )
                elif cmd["cmd"] == "join":
                    ctl.emit("joined", ms=await late_join(http, cmd))
                elif cmd["cmd"] == "stop":
                    break
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.gather(*(v.close() for v in viewers), return_exceptions=True), 10)
    ctl.emit("stopped")


async def late_join(http: aiohttp.ClientSession, cmd: dict[str, Any]) -> float | None:
    viewer = await open_viewer(http, cmd, probe=False)
    try:
        await wait_keyframes([viewer], 10)
        first = viewer.log.first_keyframe_at
        return None if first is None else (first - viewer.session.started_at) * 1000
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(viewer.close(), 5)


# -- transcoding relay ---------------------------------------------------------


async def relay_role(ctl: Control) -> None:
    """aiortc's usual fan-out: decode once, `MediaRelay`, one encoder per viewer."""
    server = SdpServer()
    relay = MediaRelay()
    source: list[MediaStreamTrack] = []
    drains: list[asyncio.Task[None]] = []

    async def drain(track: MediaStreamTrack) -> None:
        # A received track queues every decoded frame until someone reads it;
        # reading from the start keeps the first viewer from getting a backlog.
        with contextlib.suppress(MediaStreamError):
            while True:
                await track.recv()

    async def whip(request: web.Request) -> web.Response:
        def setup(pc: RTCPeerConnection, _: str) -> None:
            # The offer is applied already: its receivers (and their tracks) exist.
            for transceiver in pc.getTransceivers():
                if transceiver.kind == "video":
                    track = transceiver.receiver.track
                    source[:] = [track]
                    drains.append(asyncio.ensure_future(drain(relay.subscribe(track, buffered=False))))

        return await server.answer(request, setup, lambda: None)

    async def whep(request: web.Request) -> web.Response:
        if not source:
            raise web.HTTPNotFound(text="nothing published yet")
        track = relay.subscribe(source[0])  # buffered, as in aiortc's examples: a slow encoder delays, never skips

        def setup(pc: RTCPeerConnection, _: str) -> None:
            pc.addTrack(track)

        return await server.answer(request, setup, track.stop)

    server.app.router.add_post("/whip/{room}", whip)
    server.app.router.add_post("/whep/{stream}", whep)
    await server.start()
    try:
        ctl.emit("ready", url=server.url, pid=os.getpid())
        while (await ctl.next())["cmd"] != "stop":
            pass
    finally:
        for task in drains:
            task.cancel()
        await server.close()
    ctl.emit("stopped")


class _Discard(asyncio.DatagramProtocol):
    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        pass


async def receivers_role(ctl: Control) -> None:
    """UDP sockets read by an event loop that sleeps in epoll between
    datagrams, as a viewer process's are: the floor's receivers."""
    cmd = await ctl.next()
    loop = asyncio.get_running_loop()
    transports = []
    try:
        for _ in range(cmd["count"]):
            transport, _ = await loop.create_datagram_endpoint(_Discard, local_addr=("127.0.0.1", 0))
            transports.append(transport)
        ctl.emit("ready", ports=[t.get_extra_info("sockname")[1] for t in transports])
        while (await ctl.next())["cmd"] != "stop":
            pass
    finally:
        for transport in transports:
            transport.close()
    ctl.emit("stopped")


CHILD_ROLES: dict[str, Callable[[Control], Awaitable[None]]] = {
    "publisher": publisher_role,
    "viewers": viewers_role,
    "relay": relay_role,
    "receivers": receivers_role,
}


def child_main(role: str, max_seconds: float) -> int:
    async def run() -> int:
        use_addresses(LOOPBACK)
        ctl = Control()
        await ctl.open()
        try:
            await asyncio.wait_for(CHILD_ROLES[role](ctl), max_seconds)
        except EOFError:
            return 0  # the orchestrator is gone
        except Exception:
            ctl.emit("error", message=traceback.format_exc())
            return 1
        return 0

    return asyncio.run(run())


# == orchestrator ==============================================================


def _die_with_parent() -> None:
    # Runs in the forked child: if the benchmark is killed, the kernel sends SIGTERM.
    ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def child_env() -> dict[str, str]:
    path = os.environ.get("PYTHONPATH")
    return os.environ | {
        "PYTHONPATH": f"{ROOT}{os.pathsep}{path}" if path else str(ROOT),
        "HUB_ICE_ADDRESSES": json.dumps(LOOPBACK),
        "PYTHONUNBUFFERED": "1",
    }


def log_tail(path: Path, size: int = 3000) -> str:
    with contextlib.suppress(OSError), path.open("rb") as f:
        f.seek(max(0, path.stat().st_size - size))
        return f.read().decode(errors="replace")
    return ""


async def stop_process(proc: asyncio.subprocess.Process, grace: float = 10) -> None:
    if proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.terminate()
    try:
        await asyncio.wait_for(proc.wait(), grace)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()


class Child:
    """A child process running one role of this script."""

    def __init__(self, name: str, proc: asyncio.subprocess.Process, log: Path) -> None:
        self.name = name
        self.proc = proc
        self.log = log

    @classmethod
    async def spawn(cls, name: str, role: str, workdir: Path, max_seconds: float) -> Child:
        log = workdir / f"{name}.log"
        with log.open("wb") as err:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bench.forwarding", "--role", role, "--max-seconds", str(max_seconds),
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=err,
                cwd=ROOT, env=child_env(), preexec_fn=_die_with_parent, limit=LINE_LIMIT,
            )  # fmt: skip
        return cls(name, proc, log)

    async def send(self, cmd: str, **data: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps({"cmd": cmd, **data}) + "\n").encode())
        await self.proc.stdin.drain()

    async def expect(self, event: str, timeout: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = await asyncio.wait_for(self.proc.stdout.readline(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                raise BenchError(f"{self.name}: no '{event}' within {timeout:.0f} s\n{log_tail(self.log)}") from None
            if not line:
                await self.proc.wait()
                raise BenchError(f"{self.name} exited ({self.proc.returncode}) before '{event}'\n{log_tail(self.log)}")
            try:
                message: dict[str, Any] = json.loads(line)
            except ValueError:
                continue  # a library printed to stdout
            if message.get("event") == "error":
                raise BenchError(f"{self.name} failed:\n{message.get('message')}")
            if message.get("event") == event:
                return message

    async def ask(self, cmd: str, event: str, timeout: float = 30, **data: Any) -> dict[str, Any]:
        await self.send(cmd, **data)
        return await self.expect(event, timeout)

    async def stop(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(Exception):
                await self.ask("stop", "stopped", timeout=15)
        await stop_process(self.proc, grace=5)


async def make_token(data: Path) -> str:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hub", "token", "--data", str(data),
        "--user", "bench", "--site", "qinghai", "--role", "operator",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=ROOT, env=child_env(),
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    except TimeoutError:
        await stop_process(proc, grace=1)
        raise BenchError("python -m hub token did not answer within 60 s") from None
    if proc.returncode != 0:
        raise BenchError(f"python -m hub token failed: {err.decode()}")
    return out.decode().strip()


#: Snapshots off: each decodes a keyframe every 10 s per stream at a random
#: moment, a cost of the stream (not of its viewers) that made the windows noisy.
HUB_ENV = {"HUB_SNAPSHOT_SECONDS": "0"}


async def start_hub(data: Path, workdir: Path, path: str) -> tuple[asyncio.subprocess.Process, str]:
    port = free_port()
    with (workdir / "hub.log").open("wb") as log:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "hub", "serve", "--data", str(data), "--port", str(port),
            stdout=log, stderr=asyncio.subprocess.STDOUT, stdin=asyncio.subprocess.DEVNULL,
            cwd=ROOT, env=child_env() | HUB_ENV | {"HUB_FORWARD": path}, preexec_fn=_die_with_parent,
        )  # fmt: skip
    return proc, f"http://127.0.0.1:{port}"


async def wait_healthy(proc: asyncio.subprocess.Process, url: str, log: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            if proc.returncode is not None:
                raise BenchError(f"hub exited ({proc.returncode})\n{log_tail(log)}")
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with http.get(f"{url}/healthz", timeout=aiohttp.ClientTimeout(total=1)) as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.1)
    raise BenchError(f"hub did not answer /healthz within {timeout:.0f} s\n{log_tail(log)}")


@dataclass(frozen=True)
class Usage:
    """A server process's counters at one moment: its CPU time, the part of
    it in the kernel, and how often it went to sleep and was woken."""

    #: Seconds, from the scheduler's nanosecond counts (`cpu_seconds`).
    total: float
    #: Seconds in the kernel: psutil's 10 ms ticks, fine for a share.
    system: float
    #: Voluntary context switches: the event loop waiting in epoll, then woken.
    switches: int

    @classmethod
    def of(cls, process: psutil.Process) -> Usage:
        return cls(cpu_seconds(process), process.cpu_times().system, process.num_ctx_switches().voluntary)


@dataclass
class Config:
    viewers: list[int]
    seconds: float
    warmup: float
    per_worker: int
    relay_max_viewers: int
    modes: list[str]
    paths: list[str]
    streams: list[str]
    idle_seconds: float


@dataclass
class Figures:
    mode: str
    #: The hub's send path (HUB_FORWARD); "" for the relay.
    path: str
    stream: str
    viewers: int
    requested_viewers: int
    window_s: float
    cpu_percent: float
    cpu_per_viewer: float
    us_per_packet: float | None
    stream_kbps: float
    packet_rate: float
    forwarded_packets: int
    viewer_packets: int
    frames_sent: int
    sent_fps: float
    delivered_percent: float | None
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    latency_samples: int
    latency_source: str
    direct_p50_ms: float | None
    direct_p95_ms: float | None
    direct_delivered_percent: float | None
    late_joiner_ms: float | None
    viewers_without_keyframe: int
    machine_busy_percent: float
    probe_p50_ms: float | None = None
    probe_p95_ms: float | None = None
    #: Server CPU with the publisher paused (0 packets/s), N viewers connected.
    idle_cpu_percent: float | None = None
    #: The part of cpu_percent spent in the kernel (system calls: sendto, epoll, recvfrom).
    system_percent: float | None = None
    #: The server's voluntary context switches per second in the window.
    wakeups_per_s: float | None = None

    @property
    def capped(self) -> bool:
        return self.viewers < self.requested_viewers

    def adds(self) -> tuple[float | None, float | None]:
        def minus(a: float | None, b: float | None) -> float | None:
            return None if a is None or b is None else a - b

        return minus(self.latency_p50_ms, self.direct_p50_ms), minus(self.latency_p95_ms, self.direct_p95_ms)


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def digest_delivery(
    sent: dict[str, float], window: tuple[float, float], frames: list[list[Any]]
) -> tuple[float | None, list[float]]:
    """Share of the frames sent in the window that arrived (any time), and their latencies in ms."""
    expected = {k: t for k, t in sent.items() if window[0] <= t <= window[1]}
    latencies = [(received - expected[key]) * 1000 for key, received, _ in frames if key in expected]
    return (100 * len(latencies) / len(expected) if expected else None), latencies


async def run_phase(
    mode: str, path: str, stream_name: str, n: int, requested: int, cfg: Config, data: Path, token: str, workdir: Path
) -> Figures:
    """One server, one publisher, one direct viewer and n viewers, in fresh processes."""
    budget = cfg.warmup + cfg.seconds + cfg.idle_seconds + 90 + n
    counts = [min(cfg.per_worker, n - i) for i in range(0, n, cfg.per_worker)]
    async with contextlib.AsyncExitStack() as stack:
        # Spawn everything at once: imports overlap while the server boots.
        # The exit stack stops children in reverse: viewers, publisher, server.
        relay: Child | None = None
        hub_proc: asyncio.subprocess.Process | None = None
        if mode == "hub":
            hub_proc, url = await start_hub(data, workdir, path)
            stack.push_async_callback(stop_process, hub_proc)
        else:
            relay = await Child.spawn("relay", "relay", workdir, budget)
            stack.push_async_callback(relay.stop)
        publisher = await Child.spawn(f"{mode}-publisher", "publisher", workdir, budget)
        stack.push_async_callback(publisher.stop)
        direct = await Child.spawn(f"{mode}-direct", "viewers", workdir, budget)
        workers = [await Child.spawn(f"{mode}-viewers{i}", "viewers", workdir, budget) for i in range(len(counts))]
        stack.push_async_callback(lambda: asyncio.gather(*(c.stop() for c in (direct, *workers))))

        if hub_proc is not None:
            await wait_healthy(hub_proc, url, workdir / "hub.log")
            server = psutil.Process(hub_proc.pid)
        else:
            assert relay is not None
            ready = await relay.expect("ready", CONNECT_TIMEOUT)
            url, server = ready["url"], psutil.Process(ready["pid"])
        published = await publisher.ask(
            "publish", "published", CONNECT_TIMEOUT, url=url, token=token, room=ROOM,
            stream=asdict(STREAMS[stream_name]),
        )  # fmt: skip
        stream = published["stream"]
        await direct.send("connect", url=published["direct_url"], token=token, stream="direct", count=1, probe=False)
        for i, (worker, count) in enumerate(zip(workers, counts, strict=True)):
            # One viewer decodes, to read frame numbers where digests cannot match (the relay re-encodes).
            await worker.send("connect", url=url, token=token, stream=stream, count=count, probe=i == 0)
        connected = await asyncio.gather(*(c.expect("connected", CONNECT_TIMEOUT + 10) for c in (direct, *workers)))
        without_keyframe = sum(c["without_keyframe"] for c in connected)
        progress(f"{mode} {path} {stream_name} N={n}: connected; warm-up {cfg.warmup:.0f} s, then {cfg.seconds:.0f} s")
        await asyncio.sleep(cfg.warmup)

        psutil.cpu_percent()  # starts the machine-wide measurement: other users' load skews every figure
        usage0, t0 = Usage.of(server), time.monotonic()
        pub0 = await publisher.ask("mark", "mark")
        marks0 = await asyncio.gather(*(w.ask("mark", "mark") for w in workers))
        await asyncio.sleep(cfg.seconds)
        usage1, t1 = Usage.of(server), time.monotonic()
        machine_busy = psutil.cpu_percent()
        pub1 = await publisher.ask("mark", "mark")
        marks1 = await asyncio.gather(*(w.ask("mark", "mark") for w in workers))
        await asyncio.sleep(DRAIN_SECONDS)
        idle_cpu = None
        if mode == "hub" and cfg.idle_seconds > 0:
            # Before the late joiner: its handshake and teardown are not upkeep.
            await publisher.ask("pause", "paused")
            await asyncio.sleep(DRAIN_SECONDS)
            idle0, i0 = cpu_seconds(server), time.monotonic()
            await asyncio.sleep(cfg.idle_seconds)
            idle_cpu = 100 * (cpu_seconds(server) - idle0) / (time.monotonic() - i0)
            await publisher.ask("resume", "resumed")

        since = t0 - 2
        sent_frames = (await publisher.ask("sent", "sent", since=since))["frames"]
        reports = await asyncio.gather(*(c.ask("report", "report", 60, since=since) for c in (direct, *workers)))
        late = await workers[-1].ask("join", "joined", 30, url=url, token=token, stream=stream, count=1, probe=False)

    window = t1 - t0
    pub_dt = pub1["t"] - pub0["t"]
    packet_rate = (pub1["packets"] - pub0["packets"]) / pub_dt
    kbps = (pub1["bytes"] - pub0["bytes"]) * 8 / pub_dt / 1000
    viewer_packets = sum(b - a for m0, m1 in zip(marks0, marks1, strict=True)
                         for a, b in zip(m0["packets"], m1["packets"], strict=True))  # fmt: skip
    sent = {key: sent_at for key, _, sent_at in sent_frames}
    sent_by_index = {index: sent_at for _, index, sent_at in sent_frames}
    in_window = sum(1 for t in sent.values() if t0 <= t <= t1)
    viewer_frames = [frames for r in reports[1:] for frames in r["frames"]]
    probe = [(index, arrived) for r in reports[1:] for index, arrived in r["probe"]]
    probe_latencies = [
        (arrived - sent_by_index[i]) * 1000 for i, arrived in probe if t0 <= sent_by_index.get(i, -1.0) <= t1
    ]
    direct_delivered, direct_latencies = digest_delivery(sent, (t0, t1), reports[0]["frames"][0])

    if mode == "hub":
        # Passthrough: every viewer gets the publisher's packets as they are.
        forwarded = round(packet_rate * window * n)
        shares, latencies = [], []
        for frames in viewer_frames:
            share, lat = digest_delivery(sent, (t0, t1), frames)
            shares.append(share or 0.0)
            latencies += lat
        source = "frame digests, all viewers"
    else:
        # Re-encoded frames match no digest: count what was received, and
        # time frames by the number drawn in the picture (one probe viewer).
        forwarded = viewer_packets
        shares = [100 * sum(1 for _, t, _ in frames if t0 <= t <= t1) / max(1, in_window) for frames in viewer_frames]
        latencies = probe_latencies
        received_bytes = sum(size for frames in viewer_frames for _, t, size in frames if t0 <= t <= t1)
        kbps = received_bytes * 8 / window / 1000 / n
        packet_rate = viewer_packets / (marks1[0]["t"] - marks0[0]["t"]) / n
        source = "frame number in the picture, 1 decoding viewer"

    system = usage1.system - usage0.system
    cpu = usage1.total - usage0.total
    return Figures(
        mode=mode,
        path=path,
        stream=stream_name,
        viewers=n,
        requested_viewers=requested,
        window_s=round(window, 3),
        cpu_percent=100 * cpu / window,
        cpu_per_viewer=100 * cpu / window / n,
        us_per_packet=cpu / forwarded * 1e6 if forwarded else None,
        stream_kbps=kbps,
        packet_rate=packet_rate,
        forwarded_packets=forwarded,
        viewer_packets=viewer_packets,
        frames_sent=in_window,
        sent_fps=in_window / window,
        delivered_percent=sum(shares) / len(shares) if shares else None,
        latency_p50_ms=percentile(latencies, 50),
        latency_p95_ms=percentile(latencies, 95),
        latency_samples=len(latencies),
        latency_source=source,
        direct_p50_ms=percentile(direct_latencies, 50),
        direct_p95_ms=percentile(direct_latencies, 95),
        direct_delivered_percent=direct_delivered,
        late_joiner_ms=late["ms"],
        viewers_without_keyframe=without_keyframe,
        machine_busy_percent=machine_busy,
        probe_p50_ms=percentile(probe_latencies, 50),
        probe_p95_ms=percentile(probe_latencies, 95),
        idle_cpu_percent=idle_cpu,
        system_percent=100 * system / window,
        wakeups_per_s=(usage1.switches - usage0.switches) / window,
    )


# -- the floor ------------------------------------------------------------------

FLOOR_VIEWERS = 16


class _SocketTransport:
    """The part of asyncio's datagram transport a sink uses, on a plain
    non-blocking socket: the floor is measured without an event loop."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str) -> Any:
        return self._sock if name == "socket" else None

    def sendto(self, data: bytes, addr: tuple[str, int]) -> None:
        self._sock.sendto(data, addr)


class _BenchSink(forward.TrackSink):
    """A viewer's sink on a fixed route, configured as aiortc's `_run_rtp` would."""

    route: forward.Route

    def _route(self) -> forward.Route:
        return self.route

    def configure(self, payload_type: int) -> None:
        self._start(payload_type, ((0, b""), 0, 0))


@contextlib.contextmanager
def waiting_receivers(count: int, per_process: int) -> Iterator[list[tuple[str, int]]]:
    """`count` loopback addresses whose sockets are read by other processes
    (`receivers_role`, `per_process` sockets each), asleep between datagrams."""
    procs = []
    try:
        addrs: list[tuple[str, int]] = []
        for start in range(0, count, per_process):
            proc = subprocess.Popen(
                [sys.executable, "-m", "bench.forwarding", "--role", "receivers", "--max-seconds", "600"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                cwd=ROOT, env=child_env(), preexec_fn=_die_with_parent,
            )  # fmt: skip
            procs.append(proc)
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.write(json.dumps({"cmd": "open", "count": min(per_process, count - start)}) + "\n")
            proc.stdin.flush()
            for line in proc.stdout:
                message = json.loads(line)
                if message.get("event") == "error":
                    raise BenchError(f"floor receivers failed:\n{message.get('message')}")
                if message.get("event") == "ready":
                    addrs += [("127.0.0.1", port) for port in message["ports"]]
                    break
            else:
                raise BenchError(f"floor receivers exited ({proc.wait()}) before they were ready")
        yield addrs
    finally:
        for proc in procs:
            with contextlib.suppress(OSError):
                proc.communicate(json.dumps({"cmd": "stop"}) + "\n", timeout=10)
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def measure_floor(
    size: int, packets: int, rate: float, per_process: int, viewers: int = FLOOR_VIEWERS, paced: bool = True
) -> dict[str, Any]:
    """CPU µs per packet per viewer of the bare send loops, at `size`-byte RTP packets.

    One sending socket and SRTP session per viewer, as in the hub; only the
    sending thread's CPU counts (the kernel's loopback delivery runs in the
    sender's system call, so it is in). Twice: back to back to drained
    sockets of this process, whose reader (a thread) is rarely asleep; and
    paced at the stream's packet rate (`rate`) for 5 s to sockets read by
    other processes asleep in epoll, as the viewers' are - then each datagram
    wakes its reader, and the sender itself sleeps between packets, as the
    hub does. `paced` False: back to back only (the paced loops do not run the hub's code)."""
    profile = SRTP_PROFILES[0]
    receivers = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(viewers)]
    senders = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(viewers)]
    selector = selectors.DefaultSelector()
    for sock in (*receivers, *senders):
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
    for sock in receivers:
        selector.register(sock, selectors.EVENT_READ)
    addrs = [r.getsockname() for r in receivers]
    stop = threading.Event()

    def drain() -> None:
        while not stop.is_set():
            for key, _ in selector.select(0.05):
                with contextlib.suppress(BlockingIOError):
                    while True:
                        key.fileobj.recv(2048)  # type: ignore[union-attr]

    def sessions() -> list[Session]:
        out = []
        for _ in range(viewers):
            policy = Policy(
                key=os.urandom(profile.key_length + profile.salt_length),
                ssrc_type=Policy.SSRC_ANY_OUTBOUND,
                srtp_profile=profile.libsrtp_profile,
            )
            policy.allow_repeat_tx = True
            out.append(Session(policy))
        return out

    header = struct.Struct("!BBHII").pack
    payload = os.urandom(size - 12)

    def pacer(count: int, interval: float) -> Iterator[int]:
        """Packet numbers 0..count-1, each not before its time (none to wait for at interval 0)."""
        due = time.monotonic()
        for seq in range(count):
            if interval:
                due += interval
                time.sleep(max(0.0, due - time.monotonic()))
            yield seq

    def python_loop(to: list[tuple[str, int]], count: int = packets, interval: float = 0.0) -> Callable[[], int]:
        def run() -> int:
            srtp = sessions()
            for seq in pacer(count, interval):
                for i in range(viewers):
                    senders[i].sendto(srtp[i].protect(header(0x80, 96, seq & 0xFFFF, seq * 3000, i) + payload), to[i])
            return count

        return run

    def compiled_loop(to: list[tuple[str, int]], count: int = packets, interval: float = 0.0) -> Callable[[], int]:
        def run() -> int:
            compiled = forward._fastsend
            assert compiled is not None
            forward.use_path("c")  # binds the compiled loop to pylibsrtp's srtp_protect
            srtp = sessions()
            targets = [
                (door.srtp_context(srtp[i]), senders[i].fileno(), compiled.sockaddr(*to[i])) for i in range(viewers)
            ]
            for seq in pacer(count, interval):
                head = [header(0x80, 96, seq & 0xFFFF, seq * 3000, i) for i in range(viewers)]
                assert not compiled.send([(*t, h + payload) for t, h in zip(targets, head, strict=True)])
            return count

        return run

    def hub_loop(
        path: str, to: list[tuple[str, int]] = addrs, count: int = packets, interval: float = 0.0
    ) -> Callable[[], int]:
        """The hub's own per-packet work: TrackSource.forward to real TrackSinks."""
        forward.use_path(path)
        source = forward.TrackSource(None, "video", keyframe_interval=1.0)
        source.codec = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=96)
        dtls = RTCDtlsTransport(RTCIceTransport(RTCIceGatherer()), [certificate])
        protocols = [StunProtocol(None) for _ in range(viewers)]  # type: ignore[arg-type]
        for protocol, sock in zip(protocols, senders, strict=True):
            protocol.transport = _SocketTransport(sock)  # type: ignore[assignment]
        for srtp, protocol, addr in zip(sessions(), protocols, to, strict=True):
            sink = _BenchSink(source, RTCRtpSender("video", dtls), max_backlog=1 << 20)
            sink.route = (srtp, protocol, addr, forward._compiled_route(srtp, protocol, addr))
            sink.configure(96)
        keyframe = b"\x10" + bytes([payload[1] & 0xFE]) + payload[2:]  # VP8: S=1, partition 0, then P=0
        rtp = [
            RtpPacket(96, marker=seq % 4 == 3, sequence_number=seq, timestamp=seq * 3000, ssrc=7, payload=payload)
            for seq in range(count)
        ]
        rtp[0].payload = keyframe

        def run() -> int:
            for seq in pacer(count, interval):
                source.forward(rtp[seq])
            if any(sink.stats.packets != count for sink in source.sinks):  # type: ignore[attr-defined]
                raise BenchError("the floor's sinks did not send every packet")
            return count

        return run

    def cpu_us(loop: Callable[[], int]) -> float:
        start = time.thread_time()
        sent = loop()
        return (time.thread_time() - start) / sent / viewers * 1e6

    certificate = RTCCertificate.generateCertificate()
    drainer = threading.Thread(target=drain, daemon=True)
    drainer.start()
    built = forward._fastsend is not None
    previous = forward.current_path()
    paced_count = max(1, round(rate * 5))
    try:
        figures = {
            "size": size,
            "viewers": viewers,
            "python_us": cpu_us(python_loop(addrs)),
            "compiled_us": cpu_us(compiled_loop(addrs)) if built else None,
            "hub_python_us": cpu_us(hub_loop("python")),
            "hub_c_us": cpu_us(hub_loop("c")) if built else None,
            "rate": rate,
            "per_process": per_process,
        }
        if not paced:
            return figures
        with waiting_receivers(viewers, per_process) as far:
            figures["python_waiting_us"] = cpu_us(python_loop(far, paced_count, 1 / rate))
            figures["compiled_waiting_us"] = cpu_us(compiled_loop(far, paced_count, 1 / rate)) if built else None
            figures["hub_c_waiting_us"] = cpu_us(hub_loop("c", far, paced_count, 1 / rate)) if built else None
        return figures
    finally:
        forward.use_path(previous)
        stop.set()
        drainer.join()
        for sock in (*receivers, *senders):
            sock.close()


# -- report --------------------------------------------------------------------


def fmt(value: float | None, digits: int = 1, sign: bool = False) -> str:
    if value is None:
        return "n/a"
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def pair(a: float | None, b: float | None, sign: bool = False) -> str:
    if a is None and b is None:
        return "n/a"
    return f"{fmt(a, 0, sign)} / {fmt(b, 0, sign)}"


def fit_slope(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope: the marginal cost, free of fixed costs (ingest, RTCP, the event loop)."""
    if len({x for x, _ in points}) < 2:
        return None
    mx = sum(x for x, _ in points) / len(points)
    my = sum(y for _, y in points) / len(points)
    return sum((x - mx) * (y - my) for x, y in points) / sum((x - mx) ** 2 for x, _ in points)


def summarize(results: list[Figures]) -> dict[str, Any]:
    # The relay beside the hub on its default path where it ran ("c" sorts first).
    hub: dict[tuple[int, str], Figures] = {}
    for r in sorted((r for r in results if r.mode == "hub"), key=lambda r: r.path, reverse=True):
        hub[(r.viewers, r.stream)] = r
    ratios = []
    for r in results:
        h = hub.get((r.requested_viewers, r.stream))
        if r.mode == "relay" and h is not None and h.cpu_per_viewer > 0:
            per_packet = r.us_per_packet / h.us_per_packet if r.us_per_packet and h.us_per_packet else None
            ratios.append(
                {"n": r.requested_viewers, "relay_n": r.viewers, "stream": r.stream}
                | {"ratio": r.cpu_per_viewer / h.cpu_per_viewer}
                | {"per_packet_ratio": per_packet}
            )
    marginal = {}
    for group in sorted({(r.mode, r.path, r.stream) for r in results}):
        rows = [r for r in results if (r.mode, r.path, r.stream) == group]
        # Against packets per second rather than N: on a busy machine the
        # publisher's frame rate (so the packet rate) differs between runs.
        slope = fit_slope([(r.forwarded_packets / r.window_s, r.cpu_percent / 100) for r in rows])
        if slope is None:
            continue
        full_rate = max(r.packet_rate for r in rows)
        figures: dict[str, Any] = {
            "mode": group[0],
            "path": group[1],
            "stream": group[2],
            "us_per_packet": slope * 1e6,
            "packet_rate": full_rate,
            "cpu_percent_per_viewer": slope * full_rate * 100,
        }
        idle = [r for r in rows if r.idle_cpu_percent is not None]
        upkeep = fit_slope([(r.viewers, r.idle_cpu_percent / 100) for r in idle])  # type: ignore[operator]
        packet_only = fit_slope(
            [(r.forwarded_packets / r.window_s, (r.cpu_percent - r.idle_cpu_percent) / 100) for r in idle]  # type: ignore[operator]
        )
        if upkeep is not None and packet_only is not None:
            figures |= {
                "upkeep_cpu_percent_per_viewer": upkeep * 100,
                "upkeep_us_per_packet": upkeep / full_rate * 1e6,
                "packet_only_us_per_packet": packet_only * 1e6,
            }
        marginal["/".join(x for x in group if x)] = figures
    return {"ratios": ratios, "marginal": marginal}


def render(
    info: dict[str, Any],
    cfg: Config,
    results: list[Figures],
    summary: dict[str, Any],
    floors: dict[str, dict[str, Any]],
    runtime: float,
) -> str:
    load = ", ".join(f"{x:.2f}" for x in info["load_average_at_start"])
    streams = ", ".join(f"{s}: {STREAMS[s].width}x{STREAMS[s].height}" for s in cfg.streams)
    lines = [
        f"Machine: {info['cpu']}, {info['cores']} cores; Python {info['python']}, aiortc {info['aiortc']}, "
        f"av {info['av']}; {info['date']}; load average at start {load}",
        f"Streams: synthetic VP8 {FPS} fps ({streams}), no audio; window {cfg.seconds:.0f} s after "
        f"{cfg.warmup:.0f} s warm-up, then {cfg.idle_seconds:.0f} s paused; all processes on 127.0.0.1; "
        f"runtime {runtime:.0f} s; hub snapshots off ({', '.join(f'{k}={v}' for k, v in HUB_ENV.items())})",
        "",
        "| mode | stream | N | CPU % of a core | of which system % | wake-ups/s | idle CPU % | CPU % per viewer "
        "| µs per forwarded packet | stream kbps "
        "| pkt/s | sent fps | delivered % | latency p50 / p95 ms | direct p50 / p95 ms | adds p50 / p95 ms "
        "| late joiner first keyframe ms | machine busy % |",
        "| --- | --- |" + " ---: |" * 16,
    ]
    for r in results:
        mode = f"hub ({r.path})" if r.mode == "hub" else "relay (re-encode)"
        n = f"{r.viewers} (capped from {r.requested_viewers})" if r.capped else str(r.viewers)
        latency = pair(r.latency_p50_ms, r.latency_p95_ms)
        lines.append(
            f"| {mode} | {r.stream} | {n} | {fmt(r.cpu_percent)} | {fmt(r.system_percent)} | {fmt(r.wakeups_per_s, 0)} "
            f"| {fmt(r.idle_cpu_percent)} "
            f"| {fmt(r.cpu_per_viewer, 2)} | {fmt(r.us_per_packet, 0)} "
            f"| {fmt(r.stream_kbps, 0)} | {fmt(r.packet_rate, 0)} | {fmt(r.sent_fps)} | {fmt(r.delivered_percent)} "
            f"| {latency}{'¹' if r.mode == 'relay' else ''} | {pair(r.direct_p50_ms, r.direct_p95_ms)} "
            f"| {pair(*r.adds(), sign=True)} | {fmt(r.late_joiner_ms, 0)} | {fmt(r.machine_busy_percent, 0)} |"
        )
    lines += [
        "",
        "- CPU: user+system time of the server process (hub or relay) over the window; per viewer = CPU / N. "
        "of which system: the kernel's share (system calls: sendto with loopback delivery, epoll, recvfrom). "
        "wake-ups/s: the server's voluntary context switches (its event loop sleeping in epoll, then woken). "
        "idle CPU: the same with the publisher paused (0 packets/s), the N viewers still connected.",
        "- hub (c) / hub (python): the send path (HUB_FORWARD).",
        "- µs per forwarded packet: server CPU time / packets sent to all viewers in the window (hub: publisher's "
        "packet rate x N; relay: packets its viewers received, since it re-encodes).",
        "- stream kbps, pkt/s: RTP payload one viewer gets (hub: the publisher's stream, forwarded as is; relay: "
        "the re-encoded stream, mean per viewer).",
        "- delivered: hub = frames sent in the window that reached a viewer byte for byte (matched by digest), "
        "mean over viewers; relay = frames received in the window / frames sent in it (a rate: a frame over 100 "
        "is possible).",
        "- latency: publisher's track handing the encoded frame to aiortc -> the viewer's jitter buffer completing "
        "it, all viewers pooled. aiortc releases a frame when the next one starts, so every path holds one frame "
        "interval; 'adds' subtracts the direct aiortc-to-aiortc link measured in the same run.",
        "- sent fps: frames the publisher sent in the window; below 30 the publisher itself was short of CPU.",
        "- ¹ relay latency: re-encoded frames match no digest, so one viewer decodes and reads the frame number "
        "drawn in the picture (on the hub the same probe agrees with the digests: probe_p50_ms in --json).",
        "- late joiner: one more viewer after the window, from its WHEP POST (ICE gathering included) to its "
        "first complete keyframe.",
        "- machine busy: all cores, all processes (this benchmark's and anyone else's) during the window; "
        f"100% = {info['cores']} cores busy.",
    ]
    for r in results:
        if r.viewers_without_keyframe:
            lines.append(f"- WARNING: {r.mode} N={r.viewers}: {r.viewers_without_keyframe} viewer(s) got no keyframe")
        if r.mode == "relay" and r.capped:
            lines.append(
                f"- relay capped at {r.viewers} viewers (--relay-max-viewers) instead of {r.requested_viewers}: "
                "more would saturate this machine."
            )
    for ratio in summary["ratios"]:
        capped = f" (relay at N={ratio['relay_n']})" if ratio["relay_n"] != ratio["n"] else ""
        per_packet = f"{ratio['per_packet_ratio']:.0f}x" if ratio["per_packet_ratio"] else "n/a"
        lines.append(
            f"- relay / hub at N={ratio['n']}{capped}, {ratio['stream']}: CPU per viewer {ratio['ratio']:.1f}x, "
            f"CPU per forwarded packet {per_packet}"
        )
    for name, m in summary["marginal"].items():
        line = (
            f"- {name}: marginal cost (least squares of server CPU over forwarded packets/s, all N): "
            f"{m['us_per_packet']:.1f} µs per forwarded packet, i.e. {m['cpu_percent_per_viewer']:.3f}% of a core "
            f"per viewer at {m['packet_rate']:.0f} pkt/s"
        )
        if "upkeep_us_per_packet" in m:
            line += (
                f"; of which per packet {m['packet_only_us_per_packet']:.1f} µs and per-viewer upkeep "
                f"{m['upkeep_cpu_percent_per_viewer']:.3f}% of a core per viewer idle "
                f"({m['upkeep_us_per_packet']:.1f} µs per packet at that rate)"
            )
        lines.append(line)
    lines += floor_lines(floors)
    return "\n".join(lines)


def floor_lines(floors: dict[str, dict[str, Any]]) -> list[str]:
    lines = []
    for name, f in floors.items():
        lines.append(
            f"- floor, {name} ({f['size']}-byte packets, {f['viewers']} viewers, in this process, CPU per packet "
            f"per viewer): bare Python protect + sendto {fmt(f['python_us'])} µs, compiled batched loop "
            f"{fmt(f['compiled_us'])} µs; the hub's TrackSource.forward to TrackSinks (no event loop, no upkeep): "
            f"python path {fmt(f['hub_python_us'])} µs, c path {fmt(f['hub_c_us'])} µs"
        )
        if "python_waiting_us" not in f:
            continue
        lines.append(
            f"- floor, {name}, receivers asleep in other processes ({f['per_process']} sockets each, as the "
            f"viewers'), sent at {f['rate']:.0f} packets/s: bare Python protect + sendto "
            f"{fmt(f['python_waiting_us'])} µs, compiled loop {fmt(f['compiled_waiting_us'])} µs, the hub's "
            f"TrackSource.forward on the c path {fmt(f.get('hub_c_waiting_us'))} µs - each datagram "
            "wakes its reader, and the sender sleeps between packets, as the hub does"
        )
    return lines


async def run_sweep(cfg: Config, json_path: Path | None) -> int:
    info = machine()
    started = time.monotonic()
    results: list[Figures] = []
    with tempfile.TemporaryDirectory(prefix="bench-forwarding-") as tmp:
        workdir = Path(tmp)
        data = workdir / "hub-data"
        # Before any hub starts: the token command creates the signing secret the hubs then share.
        token = await make_token(data)
        setups = [("hub", p) for p in cfg.paths if "hub" in cfg.modes] + [("relay", "")] * ("relay" in cfg.modes)
        for stream in cfg.streams:
            for n in cfg.viewers:
                for mode, path in setups:
                    served = min(n, cfg.relay_max_viewers) if mode == "relay" else n
                    name = f"{mode}{f' ({path})' if path else ''} {stream} N={served}"
                    progress(f"{name}: starting")
                    timeout = cfg.warmup + cfg.seconds + cfg.idle_seconds + 120 + 2 * served
                    phase = run_phase(mode, path, stream, served, n, cfg, data, token, workdir)
                    try:
                        figures = await asyncio.wait_for(phase, timeout)
                    except TimeoutError:
                        raise BenchError(f"{name} did not finish within {timeout:.0f} s") from None
                    results.append(figures)
                    progress(
                        f"{name}: {figures.cpu_percent:.1f}% of a core (idle {fmt(figures.idle_cpu_percent)}%), "
                        f"delivered {fmt(figures.delivered_percent)}%, latency p50 {fmt(figures.latency_p50_ms, 0)} ms"
                    )
    floors = {}
    for stream in cfg.streams:
        rows = [r for r in results if r.stream == stream and r.packet_rate]
        if rows:
            # The stream's mean RTP packet: payload, header and a header extension block.
            size = round(sum(r.stream_kbps * 125 / r.packet_rate for r in rows) / len(rows)) + 20
            rate = max(r.packet_rate for r in rows)
            progress(f"floor at {size}-byte packets, {rate:.0f} packets/s")
            floors[stream] = measure_floor(size, packets=2000, rate=rate, per_process=cfg.per_worker)
    runtime = time.monotonic() - started
    summary = summarize(results)
    print(render(info, cfg, results, summary, floors, runtime))
    if json_path is not None:
        payload = {
            "machine": info,
            "config": asdict(cfg),
            "runtime_s": runtime,
            "results": [asdict(r) | {"capped": r.capped, "adds_p50_ms": r.adds()[0], "adds_p95_ms": r.adds()[1]}
                        for r in results],
            **summary,
            "floors": floors,
        }  # fmt: skip
        json_path.write_text(json.dumps(payload, indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--viewers", default="1,8,16,32", help="comma-separated viewer counts (default 1,8,16,32)")
    parser.add_argument("--seconds", type=float, default=10, help="measurement window (default 10)")
    parser.add_argument("--warmup", type=float, default=3, help="seconds after all viewers connected (default 3)")
    parser.add_argument("--relay-max-viewers", type=int, default=16, help="cap for the transcoding relay (default 16)")
    parser.add_argument("--per-worker", type=int, default=8, help="viewers per worker process (default 8)")
    parser.add_argument("--modes", default="hub,relay", help="which setups to run (default hub,relay)")
    parser.add_argument("--paths", default="c,python", help="the hub's send paths, HUB_FORWARD (default c,python)")
    parser.add_argument("--streams", default="400k,1500k", help=f"of {', '.join(STREAMS)} (default both)")
    parser.add_argument("--idle-seconds", type=float, default=5, help="publisher paused after the window (default 5)")
    parser.add_argument("--quick", action="store_true", help="smoke test: viewers 1,4 and a 4 s window")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument(
        "--floor-only", action="store_true",
        help="only the in-process floor lines (no hub, no viewers), at --floor-size and --floor-rate",
    )  # fmt: skip
    parser.add_argument("--floor-size", type=int, default=909, help="the floor's RTP packet size (default 909)")
    parser.add_argument("--floor-packets", type=int, default=2000, help="packets per floor loop (default 2000)")
    parser.add_argument(
        "--floor-rate", type=float, default=0,
        help="with --floor-only: also the paced lines, at this many packets/s (5 s each)",
    )  # fmt: skip
    parser.add_argument("--role", choices=sorted(CHILD_ROLES), help=argparse.SUPPRESS)
    parser.add_argument("--max-seconds", type=float, default=300, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.role:
        return child_main(args.role, args.max_seconds)

    if args.quick:
        args.viewers, args.seconds = "1,4", 4.0
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not set(modes) <= {"hub", "relay"}:
        parser.error("--modes takes hub and/or relay")
    paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    streams = [s.strip() for s in args.streams.split(",") if s.strip()]
    if not set(paths) <= set(forward.FORWARD_PATHS) or not set(streams) <= set(STREAMS):
        parser.error(f"--paths takes {forward.FORWARD_PATHS}, --streams {tuple(STREAMS)}")
    if "c" in paths and forward._fastsend is None:
        # The hub would fall back to Python with one log line, and its rows
        # would still say "hub (c)".
        parser.error(
            "--paths c needs the compiled send loop, hub.media._fastsend, which is not built here: "
            "build it with `.venv/bin/python setup.py build_ext --inplace` (needs a C compiler and "
            "Python's headers), or run --paths python"
        )
    cfg = Config(
        viewers=[int(v) for v in args.viewers.split(",")],
        seconds=args.seconds,
        warmup=args.warmup,
        per_worker=args.per_worker,
        relay_max_viewers=args.relay_max_viewers,
        modes=modes,
        paths=paths,
        streams=streams,
        idle_seconds=args.idle_seconds,
    )
    if min(cfg.viewers) < 1 or cfg.per_worker < 1 or cfg.relay_max_viewers < 1:
        parser.error("viewer counts must be positive")
    if args.floor_only:
        print(f"machine: {machine()}")
        floor = measure_floor(
            args.floor_size, args.floor_packets, args.floor_rate, args.per_worker, paced=args.floor_rate > 0
        )
        print("\n".join(floor_lines({f"{args.floor_size} bytes": floor})))
        return 0
    use_addresses(LOOPBACK)
    try:
        return asyncio.run(run_sweep(cfg, args.json))
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130  # children were stopped on the way out


if __name__ == "__main__":
    sys.exit(main())
