"""client/bot.py as a process of its own, for tests that put a client inside a network namespace
(tests/netem.py): `ip netns exec NS python -m tests.nsbot publish|view ...`.

It prints one JSON object per line on stdout: `{"connected": ..., "local": TYPE}` once ICE and
DTLS are up (TYPE is the kind of local candidate the selected pair uses: host, srflx or relay), and
at the end `{"sent": [...]}` or `{"received": [...], "delivered": [...]}` — every frame as [sha1 hex,
monotonic time, keyframe] (and, received, its size in bytes; `delivered` counts at the RTP level,
see `RtpFrames`); a `--simulcast` publisher prints
`{"layers": {rid: [...]}}`, the frames of each layer. `watch` polls the hub for WHEP sessions'
layer choices (GET /whep/{stream}/{session}) and prints `{"at": ..., "states": {session: {...}}}`
every `--every` seconds; run in the hub's namespace, its requests do not cross the viewers'
emulated links.

CLOCK_MONOTONIC is the same for every process of the machine (namespaces do not change
it), so the test lines up the publisher's and the viewer's times. It stays connected for
`--seconds` or until its stdin is closed. A failure prints `{"error": ...}` and exits with 1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import queue
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import replace
from typing import Any

import aiohttp
from aiortc import RTCIceServer, RTCRtpReceiver
from aiortc.codecs.vpx import vp8_depayload
from aiortc.rtp import RtpPacket

from client import bot
from client.simulcast import LAYERS, SimulcastVideo

from .netem import Namespace


def _emit(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


def local_candidate_type(session: bot.Session) -> str | None:
    """The kind of local candidate of the connection's selected ICE pair (aioice's, private)."""
    transport = session.pc.getTransceivers()[0].sender.transport.transport
    pair = transport._connection._nominated.get(1)  # component 1: RTP (and RTCP, muxed)
    return pair.local_candidate.type if pair else None


async def connected(session: bot.Session, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while session.pc.connectionState != "connected":
        if session.pc.connectionState in ("failed", "closed"):
            raise bot.ClientError(f"the peer connection {session.pc.connectionState}")
        if time.monotonic() > deadline:
            raise bot.ClientError(f"not connected after {timeout} s ({session.pc.connectionState})")
        await asyncio.sleep(0.05)


def count_requests(session: bot.Session) -> dict[str, int]:
    """Counts, as the publisher's sender handles them, of packets retransmitted on NACK and of
    keyframe requests (PLI/FIR): proof that repair requests crossed the link (aiortc's, private)."""
    sender = session.pc.getSenders()[0]
    counts = {"retransmit_requests": 0, "keyframe_requests": 0}
    retransmit, send_keyframe = sender._retransmit, sender._send_keyframe

    async def counted_retransmit(sequence_number: int) -> None:
        counts["retransmit_requests"] += 1
        await retransmit(sequence_number)

    def counted_keyframe() -> None:
        counts["keyframe_requests"] += 1
        send_keyframe()

    sender._retransmit = counted_retransmit  # type: ignore[method-assign]
    sender._send_keyframe = counted_keyframe  # type: ignore[method-assign]
    return counts


class RtpFrames:
    """The VP8 frames the hub delivered to a viewer, read from its RTP packets (after SRTP; NACK
    repairs included) rather than from what aiortc's jitter buffer passes on: that buffer holds
    every frame behind a packet lost for good until 512 more packets have come, so on a lossy link
    it shows its own stalls. A frame counts once every packet from its first (S bit, partition 0)
    to its marker has come, at the time the last of them came; its key is the publisher's."""

    def __init__(self, receiver: RTCRtpReceiver) -> None:
        self._packets: dict[int, tuple[float, RtpPacket]] = {}  # by sequence number, unwrapped
        self._top: int | None = None
        handle = receiver._handle_rtp_packet

        async def tap(packet: RtpPacket, arrival_time_ms: int) -> None:
            seq = packet.sequence_number
            if self._top is not None:
                ahead = (seq - self._top) & 0xFFFF
                seq = self._top + (ahead if ahead < 0x8000 else ahead - 0x10000)
            self._top = seq if self._top is None else max(self._top, seq)
            self._packets.setdefault(seq, (time.monotonic(), packet))
            await handle(packet, arrival_time_ms)

        receiver._handle_rtp_packet = tap  # type: ignore[method-assign]

    def frames(self) -> list[list[Any]]:
        """[sha1 hex, monotonic time, keyframe, size] of every complete frame, in order."""
        frames = []
        for seq, (_, first) in sorted(self._packets.items()):
            if not first.payload or first.payload[0] & 0x17 != 0x10:
                continue
            parts, times = [], []
            while (entry := self._packets.get(seq)) is not None and entry[1].timestamp == first.timestamp:
                try:
                    parts.append(vp8_depayload(entry[1].payload))
                except ValueError:  # not VP8 (another codec's viewer): nothing to count
                    break
                times.append(entry[0])
                if entry[1].marker:
                    data = b"".join(parts)
                    key = bot.frame_key("video/vp8", data)
                    frames.append([key.hex(), max(times), bot.is_keyframe("video/vp8", data), len(data)])
                    break
                seq += 1
        return frames


def stdin_closed() -> asyncio.Future[None]:
    """Done when stdin reaches its end (BotProcess.finish). A daemon thread reads it: an executor's
    thread would keep the process from exiting while the test keeps stdin open."""
    loop = asyncio.get_running_loop()
    closed: asyncio.Future[None] = loop.create_future()

    def read() -> None:
        sys.stdin.read()
        with contextlib.suppress(RuntimeError):  # the loop is already gone
            loop.call_soon_threadsafe(lambda: closed.done() or closed.set_result(None))

    threading.Thread(target=read, daemon=True).start()
    return closed


async def watch(http: aiohttp.ClientSession, args: argparse.Namespace) -> None:
    """Print the layer state of every session named in `args.target` ("STREAM/SESSION,...")."""
    paths = args.target.split(",")
    closed = stdin_closed()
    deadline = time.monotonic() + args.seconds
    while not closed.done() and time.monotonic() < deadline:
        states = {}
        for path in paths:
            async with http.get(f"{args.url}/whep/{path}", headers=bot._auth(args.token)) as response:
                if response.status != 200:
                    raise bot.ClientError(f"GET /whep/{path}: {response.status} {await response.text()}")
                states[path.rsplit("/", 1)[-1]] = await response.json()
        _emit(at=time.monotonic(), states=states)
        await asyncio.wait([closed], timeout=args.every)


async def run(args: argparse.Namespace) -> None:
    ice = None
    if args.ice_servers is not None:
        ice = [RTCIceServer(s["urls"], s.get("username"), s.get("credential")) for s in json.loads(args.ice_servers)]
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        if args.action == "watch":
            await watch(http, args)
            return
        simulcast: SimulcastVideo | None = None
        asked: dict[str, int] = {}
        if args.action == "publish" and args.simulcast:
            specs = LAYERS
            if args.layer_bitrates is not None:
                specs = tuple(replace(spec, bitrate=b) for spec, b in zip(LAYERS, args.layer_bitrates, strict=True))
            simulcast = SimulcastVideo("vp8", args.width, args.height, args.fps, specs=specs)
            session = await bot.publish(http, args.url, args.token, args.target, [simulcast], ice_servers=ice)
        elif args.action == "publish":
            video = bot.SyntheticVideo("vp8", args.width, args.height, args.fps, bitrate=args.bitrate)
            session = await bot.publish(http, args.url, args.token, args.target, [video], ice_servers=ice)
            asked = count_requests(session)
        else:
            session = await bot.view(http, args.url, args.token, args.target, kinds=("video",), ice_servers=ice)
            delivered = RtpFrames(session.pc.getReceivers()[0])
        try:
            await connected(session, args.connect_timeout)
            if args.tile is not None:
                width, height = args.tile
                async with http.patch(session.location, json={"width": width, "height": height},
                                      headers=bot._auth(args.token)) as response:  # fmt: skip
                    if response.status != 200:
                        raise bot.ClientError(f"PATCH {session.location}: {response.status} {await response.text()}")
            _emit(connected=session.resource_id, local=local_candidate_type(session), at=time.monotonic())
            await asyncio.wait([stdin_closed()], timeout=args.seconds)
        finally:
            await session.close()
        if simulcast is not None:
            frames = {rid: [[k.hex(), f.sent_at, f.keyframe] for k, f in layer.sent.items()]
                      for rid, layer in simulcast.layers.items()}  # fmt: skip
            _emit(layers=frames)
        elif args.action == "publish":
            _emit(sent=[[k.hex(), f.sent_at, f.keyframe] for k, f in video.sent.items()], **asked)
        else:
            _emit(received=[[f.key.hex(), f.received_at, f.keyframe, f.size] for f in session.logs["video"].frames],
                  delivered=delivered.frames())  # fmt: skip


class BotProcess:
    """A tests.nsbot process started in a namespace, its JSON lines read as they come (a thread
    per process: a test waits for a line with a time bound, never on a pipe that stays silent)."""

    def __init__(self, ns: Namespace, action: str, url: str, token: str, target: str, *options: str) -> None:
        self._stderr = tempfile.TemporaryFile()
        # The positionals after "--": an id may begin with "-" (token_urlsafe), which argparse takes for an option.
        args = (*options, "--", action, url, token, target)
        self.proc = ns.python("-m", "tests.nsbot", *args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=self._stderr)  # fmt: skip
        self._lines: queue.Queue[dict[str, Any] | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(json.loads(line))
        self._lines.put(None)

    def finish(self) -> None:
        """Tell the bot to end its session now (and print what it sent or received)."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()

    def next(self, timeout: float) -> dict[str, Any]:
        """The next line; a test fails with the bot's exit status if it ended without one."""
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"no line from {self.proc.args} in {timeout} s") from None
        if line is None:
            status = self.proc.wait(10)
            self._stderr.seek(0)
            raise RuntimeError(f"bot exited ({status}) without a line: {self._stderr.read()[-3000:].decode()}")
        return line


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.nsbot")
    parser.add_argument("action", choices=("publish", "view", "watch"))
    parser.add_argument("url")
    parser.add_argument("token")
    parser.add_argument("target", help="publish: the room id; view: the stream id; watch: STREAM/SESSION,...")
    parser.add_argument("--seconds", type=float, default=60.0, help="longest time to stay connected")
    parser.add_argument("--connect-timeout", type=float, default=20.0)
    parser.add_argument("--ice-servers", help="JSON RTCIceServer list; default: those the hub hands out")
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--bitrate", type=int, default=300_000)
    parser.add_argument("--simulcast", action="store_true", help="publish: three layers (client/simulcast.py)")
    parser.add_argument("--layer-bitrates", type=int, nargs=len(LAYERS), metavar="BITS",
                        help="publish --simulcast: each layer's bitrate, lowest first")  # fmt: skip
    parser.add_argument("--tile", type=int, nargs=2, metavar=("WIDTH", "HEIGHT"), help="view: state this tile size")
    parser.add_argument("--every", type=float, default=0.5, help="watch: seconds between polls")
    args = parser.parse_args()
    try:
        asyncio.run(run(args))
    except bot.ClientError as exc:
        _emit(error=str(exc))
        sys.exit(1)


if __name__ == "__main__":
    main()
