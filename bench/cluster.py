"""What a relay costs: CPU of the pulling process and latency per hop.

Three hub processes share a redis-server (all on 127.0.0.1): the origin,
P2, and P3 configured to pull through P2 (HUB_UPSTREAM). One publisher on
the origin sends a VP8 640x480 30 fps file encoded beforehand (no live
encoding competes for the CPU); then N viewers watch it, in turn, on the
origin (0 hops), on P2 (1 hop: P2 pulls from the origin) and on P3 (2 hops:
P3 pulls from P2, P2 from the origin). Each phase measures every hub
process's CPU over the window, the viewers' delivered frames and their
latency (frame handed to the publisher's sender → frame whole at the viewer;
publisher and viewers share this process's clock).

    .venv/bin/python -m bench.cluster              # about 1.5 minutes
    .venv/bin/python -m bench.cluster --viewers 2 --seconds 5

`--relays 3,6,12` measures a relay's cost alone, on the process that
pulls: 12 publishers (one process each) on the origin; P2 pulls 3, then 6,
then 12 of the streams with no viewer (a long linger keeps a pull its
opening viewer left), then 1, 2, 3 viewers of each stream join on P2.
Both figures are margins, slopes of P2's CPU on its own packet counters
(/metrics): a pull's, over the number of pulls (per packet pulled); a
viewer's, over the number of viewers with all the pulls up (per packet
sent). Both come from the same process in one run, so no figure of another
process (nor its noise) enters their ratio. Beside them, in the same
minutes (the pulls still up), the machine's floor under a pull: what an
asyncio process that ignores its datagrams spends on each at P2's pulled
packet rate (bench/wakeup.py), read by its loop and by hub.media.reader's
thread, sent evenly and in bursts of a frame's packets (as a frame's come),
and so what a pull costs above it. HUB_PULL_READER in the environment
chooses how P2 reads its pulls (default "lane"; to compare, "thread"
without the door's express lane, "loop" for the loop's own reading).

    .venv/bin/python -m bench.cluster --relays 3,6,12 --seconds 15
    HUB_PULL_READER=thread .venv/bin/python -m bench.cluster --relays 3,6,12 --seconds 15

The report (a markdown table) goes to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import psutil

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.forwarding import percentile  # noqa: E402
from bench.harness import FPS, ROOM, make_source, running_hub, say  # noqa: E402
from bench.machine import cpu_seconds, free_port, machine  # noqa: E402
from client import bot  # noqa: E402
from hub.media.ice import use_addresses  # noqa: E402

WARMUP = 3.0
SETTLE = 2.0
DRAIN = 1.0
LINGER = 1.0


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed (apt-get install redis-server)")
    port = free_port()
    with tempfile.TemporaryDirectory() as work:
        proc = subprocess.Popen(
            [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no", "--dir", work],
            stdout=subprocess.DEVNULL,
        )
        try:
            time.sleep(0.5)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            proc.terminate()
            proc.wait(10)


async def health(http: aiohttp.ClientSession, url: str) -> dict[str, int]:
    async with http.get(f"{url}/healthz") as r:
        return dict(await r.json())


async def measure_all(procs: dict[str, psutil.Process], seconds: float) -> dict[str, float]:
    """Percent of a core each process used over the same window."""
    before, start = {n: cpu_seconds(p) for n, p in procs.items()}, time.monotonic()
    await asyncio.sleep(seconds)
    after, elapsed = {n: cpu_seconds(p) for n, p in procs.items()}, time.monotonic() - start
    return {n: 100 * (after[n] - before[n]) / elapsed for n in procs}


def cluster_dirs(root: Path, names: tuple[str, ...]) -> list[Path]:
    """A data directory per process, all with one user-token secret (tokens of one work on all)."""
    user_secret = secrets.token_urlsafe(48)
    dirs = []
    for name in names:
        d = root / name
        d.mkdir()
        (d / "secret.key").write_text(user_secret)
        os.chmod(d / "secret.key", 0o600)
        dirs.append(d)
    return dirs


def cluster_env(redis_url: str) -> dict[str, str]:
    env = {"HUB_REDIS": redis_url, "HUB_CLUSTER_SECRET": secrets.token_urlsafe(32)}
    return env | {"HUB_RELAY_LINGER_SECONDS": str(LINGER), "HUB_SNAPSHOT_SECONDS": "0"}


def print_machine(started: float, what: str) -> None:
    info = machine()
    print(
        f"Machine: {info['cpu']}, {info['cores']} cores; Python {info['python']}, aiortc {info['aiortc']},"
        f" av {info['av']}; {info['date']}; load average at start {info['load_average_at_start']}"
    )
    print(
        "Stream: VP8 640x480 30 fps from a file (encoder target 400 kbps, a keyframe a second);"
        f" {what}; all on 127.0.0.1; runtime {time.monotonic() - started:.0f} s\n"
    )


async def run(viewers: int, seconds: float) -> None:
    use_addresses(["127.0.0.1"])
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp, redis_server() as redis_url:
        root = Path(tmp)
        source = root / "source.webm"
        phase_seconds = SETTLE + seconds + DRAIN + LINGER + 3
        make_source(source, WARMUP + seconds + 3 * phase_seconds + 10)
        dirs = cluster_dirs(root, ("origin", "p2", "p3"))
        env = cluster_env(redis_url)
        async with (
            running_hub(dirs[0], env) as origin,
            running_hub(dirs[1], env) as p2,
            running_hub(dirs[2], env | {"HUB_UPSTREAM": p2.url}) as p3,
            aiohttp.ClientSession() as http,
        ):
            hubs = {"origin": origin, "P2": p2, "P3": p3}
            procs = {name: psutil.Process(h.process.pid) for name, h in hubs.items()}
            video = bot.FileTracks(source).tracks[0]
            publisher = await bot.publish(http, origin.url, origin.token, ROOM, [video])
            await asyncio.sleep(WARMUP)
            say(f"idle: {seconds:g} s with the publisher only")
            idle = await measure_all(procs, seconds)
            rows = []
            for hops, name in enumerate(("origin", "P2", "P3")):
                hub = hubs[name]
                say(f"{viewers} viewers on {name} ({hops} hops)")
                sessions = [
                    await bot.view(http, hub.url, origin.token, publisher.resource_id, kinds=("video",))
                    for _ in range(viewers)
                ]
                await asyncio.sleep(SETTLE)
                counts = {n: await health(http, h.url) for n, h in hubs.items()}
                since = time.monotonic()
                cpu = await measure_all(procs, seconds)
                until = time.monotonic()
                await asyncio.sleep(DRAIN)
                latencies: list[float] = []
                expected = sum(1 for f in video.sent.values() if since <= f.sent_at < until)
                matched = 0
                for session in sessions:
                    for frame in session.logs["video"].frames:
                        sent = video.sent.get(frame.key)
                        if sent is not None and since <= sent.sent_at < until:
                            matched += 1
                            latencies.append(1000 * (frame.received_at - sent.sent_at))
                for session in sessions:
                    await session.close()
                await asyncio.sleep(LINGER + 1)  # the relays end
                rows.append((name, hops, cpu, counts, 100 * matched / max(1, expected * viewers), latencies))
            await publisher.close()

    print_machine(started, f"{viewers} viewers per phase, window {seconds:g} s")
    print(
        "| viewers on | hops | relays (origin/P2/P3) | origin CPU % | P2 CPU % | P3 CPU % | delivered % |"
        " latency p50 / p95 ms |"
    )
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |")
    print(f"| (none: idle) | – | 0/0/0 | {idle['origin']:.1f} | {idle['P2']:.1f} | {idle['P3']:.1f} | – | – |")
    p50s = []
    for name, hops, cpu, counts, ratio, latencies in rows:
        p50, p95 = percentile(latencies, 50), percentile(latencies, 95)
        p50s.append(p50 or 0.0)
        relays = "/".join(str(counts[n]["relays"]) for n in ("origin", "P2", "P3"))
        print(
            f"| {name} | {hops} | {relays} | {cpu['origin']:.1f} | {cpu['P2']:.1f} | {cpu['P3']:.1f} | {ratio:.1f} |"
            f" {p50:.0f} / {p95:.0f} |"
        )
    direct, one, two = rows
    per_viewer = (direct[2]["origin"] - idle["origin"]) / viewers
    relay_pull = one[2]["P2"] - idle["P2"] - viewers * per_viewer
    serve_pull = one[2]["origin"] - idle["origin"]
    print()
    print(f"- one viewer on the hosting process: {per_viewer:.2f}% of a core")
    print(
        f"- a relay on the pulling process (P2 with {viewers} viewers, less {viewers} viewers' cost and idle):"
        f" {relay_pull:.2f}% of a core, {relay_pull / per_viewer if per_viewer > 0 else float('nan'):.1f}x a viewer"
    )
    print(f"- the pull on the process it pulls from (origin, 1 hop, less idle): {serve_pull:.2f}% of a core")
    print(f"- latency a hop adds at p50: {p50s[1] - p50s[0]:.0f} ms (0→1 hop), {p50s[2] - p50s[1]:.0f} ms (1→2 hops)")


#: Viewers of each stream on P2, phase by phase (`--relays`).
PER_STREAM = (1, 2, 3)


async def packet_counts(http: aiohttp.ClientSession, url: str) -> tuple[int, int, int]:
    """(RTP packets received, RTP packets forwarded, of the received those
    the express lane took) by a hub process so far, from /metrics."""
    async with http.get(f"{url}/metrics") as r:
        text = await r.text()
    values = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        values[name.removesuffix("_total")] = value
    return tuple(int(float(values[f"hub_packets_{name}"])) for name in ("received", "forwarded", "express"))  # type: ignore[return-value]


@dataclass
class RelayPhase:
    viewers: int
    relays: int
    cpu: dict[str, float]
    #: P2 over the window: CPU seconds, packets received (from the pulls), packets forwarded (to viewers).
    seconds: float
    cpu_seconds: float
    received: int
    forwarded: int
    express: int


async def relay_phase(
    http: aiohttp.ClientSession, procs: dict[str, psutil.Process], p2: str, viewers: int, seconds: float
) -> RelayPhase:
    relays = (await health(http, p2))["relays"]
    before, used, start = await packet_counts(http, p2), cpu_seconds(procs["P2"]), time.monotonic()
    cpu = await measure_all(procs, seconds)
    after, used, elapsed = await packet_counts(http, p2), cpu_seconds(procs["P2"]) - used, time.monotonic() - start
    return RelayPhase(viewers, relays, cpu, elapsed, used, *(a - b for a, b in zip(after, before, strict=True)))


def slope(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Least squares y = a + b x over `points`: (b, the largest distance of a point from the line)."""
    n = len(points)
    mx, my = sum(x for x, _ in points) / n, sum(y for _, y in points) / n
    b = sum((x - mx) * (y - my) for x, y in points) / sum((x - mx) ** 2 for x, _ in points)
    return b, max(abs(y - my - b * (x - mx)) for x, y in points)


async def wakeup_floor(rate: float, seconds: float, burst: int, thread: bool) -> float:
    """bench.wakeup's asyncio receiver at `rate`, in a process of its own, now: µs a datagram.
    `thread`: its socket read by hub.media.reader's thread, as P2 reads its pulls (HUB_PULL_READER)."""
    code = (
        "import sys; from bench.wakeup import floor;"
        " print(floor(float(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), thread=sys.argv[4] == 'thread'))"
    )
    how = "thread" if thread else "loop"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, str(rate), str(seconds), str(burst), how, cwd=ROOT, stdout=subprocess.PIPE
    )
    out, _ = await proc.communicate()
    return float(out)


async def run_relays(pulls: list[int], seconds: float, reuse: Path | None) -> None:
    use_addresses(["127.0.0.1"])
    started = time.monotonic()
    streams = pulls[-1]
    with tempfile.TemporaryDirectory() as tmp, redis_server() as redis_url:
        root = Path(tmp)
        # Viewers join one by one: on a loaded machine a phase takes well over its window.
        length = WARMUP + (1 + len(pulls) + len(PER_STREAM)) * (2 * SETTLE + 2 * seconds) + 60
        source = reuse or root / "source.webm"
        if not source.exists():
            make_source(source, length)
        dirs = cluster_dirs(root, ("origin", "p2"))
        # Every publisher and viewer is the one bench user.
        env = cluster_env(redis_url) | {"HUB_WHIP_SESSIONS_PER_USER": str(streams)}
        # P2's pulls outlive their viewers: a pull is opened by a viewer that
        # leaves at once, and the pull phases measure the pulls alone.
        env |= {"HUB_RELAY_LINGER_SECONDS": "3600"}
        async with (
            running_hub(dirs[0], env) as origin,
            running_hub(dirs[1], env) as p2,
            aiohttp.ClientSession() as http,
        ):
            procs = {"origin": origin.psutil(), "P2": p2.psutil()}
            authorized = aiohttp.ClientSession(headers={"Authorization": f"Bearer {origin.token}"})
            async with authorized:
                # One first: publishers that all join a room not there yet
                # race to open it, and with 12 at once one sometimes lost.
                origin.publish(1, source, length)
                await origin.wait_for_streams(authorized, 1)
                origin.publish(streams - 1, source, length)
                ids = await origin.wait_for_streams(authorized, streams)
            await asyncio.sleep(WARMUP)
            say(f"idle: {seconds:g} s with {streams} publishers on the origin, no pull")
            phases = [await relay_phase(http, procs, p2.url, 0, seconds)]
            for count in pulls:
                say(f"{count} pulls on P2, no viewer")
                for stream_id in ids[phases[-1].relays : count]:
                    session = await bot.view(http, p2.url, origin.token, stream_id, kinds=("video",))
                    await session.close()
                await asyncio.sleep(SETTLE)
                phases.append(await relay_phase(http, procs, p2.url, 0, seconds))
            sessions: list[bot.Session] = []
            for per_stream in PER_STREAM:
                say(f"{per_stream} viewers of each of the {streams} streams on P2")
                while len(sessions) < per_stream * streams:
                    stream_id = ids[len(sessions) % streams]
                    sessions.append(await bot.view(http, p2.url, origin.token, stream_id, kinds=("video",)))
                await asyncio.sleep(SETTLE)
                phases.append(await relay_phase(http, procs, p2.url, len(sessions), seconds))
            for session in sessions:
                await session.close()
            pulled_rate = phases[len(pulls)].received / phases[len(pulls)].seconds
            burst = max(1, round(pulled_rate / (streams * FPS)))
            say(f"the floor: an asyncio receiver at {pulled_rate:.0f} datagrams/s, the pulls still up")
            floors = {
                (n, thread): await wakeup_floor(pulled_rate, seconds, n, thread)
                for n in sorted({1, burst})
                for thread in (False, True)
            }

    print_machine(started, f"{streams} streams on the origin, pulled by P2; window {seconds:g} s per phase")
    print(
        "| viewers on P2 | relays on P2 | origin CPU % | P2 CPU % | P2 packets/s in | P2 packets/s out"
        " | of those in, % the express lane took |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for ph in phases:
        print(
            f"| {ph.viewers} | {ph.relays} | {ph.cpu['origin']:.1f} | {ph.cpu['P2']:.1f} |"
            f" {ph.received / ph.seconds:.0f} | {ph.forwarded / ph.seconds:.0f} |"
            f" {100 * ph.express / ph.received if ph.received else 0:.1f} |"
        )
    # Both figures are margins, each a slope on P2 alone: a pull's, CPU
    # against packets pulled over the phases without viewers (idle, then
    # more and more pulls); a viewer's, CPU against packets forwarded over
    # the phases with all the pulls (none, then 1, 2, 3 viewers a stream),
    # where a viewer shares each packet's wake-up with the stream's other
    # viewers and its pull. Counting packets, not seconds, keeps the figures
    # true when a loaded machine starves P2: it then handles fewer packets,
    # each for about the same CPU. Whatever a pull costs besides its packets
    # (RTCP, ICE consent) lands in its slope, and a viewer's RTCP in its.
    pulling = phases[: 1 + len(pulls)]
    viewing = phases[len(pulls) :]
    per_pulled, pull_worst = slope([(ph.received / ph.seconds, ph.cpu_seconds / ph.seconds) for ph in pulling])
    per_sent, view_worst = slope([(ph.forwarded / ph.seconds, ph.cpu_seconds / ph.seconds) for ph in viewing])
    # The first viewer of a stream also starts its per-packet send (the shared
    # header fields, the batch), which the later ones share: their slope alone.
    later, _ = slope([(ph.forwarded / ph.seconds, ph.cpu_seconds / ph.seconds) for ph in viewing[1:]])
    idle = phases[0].cpu_seconds / phases[0].seconds
    alone = phases[len(pulls)]
    pulled = (alone.cpu_seconds / alone.seconds - idle) / max(1, alone.received / alone.seconds)
    print()
    print(f"- P2's idle: {100 * idle:.2f}% of a core")
    print(
        f"- a pull on P2 (slope over {', '.join(map(str, pulls))} pulls): {1e6 * per_pulled:.1f} µs of CPU"
        f" per packet pulled (largest distance from the line {100 * pull_worst:.2f}% of a core);"
        f" {(alone.cpu['P2'] - 100 * idle) / streams:.2f}% of a core a pull at {streams},"
        f" {1e6 * pulled:.1f} µs a packet (less idle, not a slope)"
    )
    print(
        f"- a viewer on P2 (slope over 0, {', '.join(map(str, PER_STREAM))} viewers a stream):"
        f" {1e6 * per_sent:.1f} µs of CPU per packet it is sent (largest distance {100 * view_worst:.2f}%)"
    )
    print(f"- so a relay costs P2 {per_pulled / per_sent:.2f} viewers (slopes); {pulled / per_sent:.2f} (less idle)")
    mode = os.environ.get("HUB_PULL_READER", "lane")
    print(f"- P2 read its pulls with HUB_PULL_READER={mode}")
    for (n, thread), floor in floors.items():
        shape = "evenly" if n == 1 else f"in bursts of {n} (a frame's packets)"
        reading = "by hub.media.reader's thread" if thread else "by its loop"
        print(
            f"- the floor, same minutes: an asyncio process that ignores its datagrams, read {reading},"
            f" sent {shape} at {pulled_rate:.0f}/s, spends {floor:.1f} µs of CPU on each (bench/wakeup.py),"
            f" {1e-6 * floor / per_sent:.2f} viewers; a pull above it {1e6 * per_pulled - floor:.1f} µs,"
            f" {(per_pulled - 1e-6 * floor) / per_sent:.2f} viewers"
        )
    print(
        f"- a viewer past the first of its stream (slope over {', '.join(map(str, PER_STREAM))} a stream):"
        f" {1e6 * later:.1f} µs a packet sent; a relay {per_pulled / later:.2f} of those"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--viewers", type=int, default=4, help="viewers per phase (default 4)")
    parser.add_argument("--seconds", type=float, default=10.0, help="measuring window per phase (default 10)")
    parser.add_argument(
        "--relays",
        default="",
        metavar="N,N,...",
        help="measure relays on P2 alone, at these numbers of pulls (e.g. 3,6,12; see above)",
    )
    parser.add_argument(
        "--source",
        type=Path,
        help="with --relays: the source file to send, encoded there if missing (kept for later runs)",
    )
    args = parser.parse_args()
    if args.relays:
        try:
            pulls = sorted({int(n) for n in args.relays.split(",")})
        except ValueError:
            parser.error("--relays takes numbers of pulls, e.g. 3,6,12")
        if len(pulls) < 2 or pulls[0] < 1:
            parser.error("--relays needs at least two numbers of pulls, each 1 or more, e.g. 3,6,12")
        asyncio.run(run_relays(pulls, args.seconds, args.source))
    else:
        asyncio.run(run(args.viewers, args.seconds))


if __name__ == "__main__":
    main()
