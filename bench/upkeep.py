"""What a viewer costs the hub when no media flows: its upkeep alone.

One hub (`python -m hub serve`), one publisher, N viewers in worker
processes (bench/forwarding's roles); once every viewer has its first
keyframe the publisher pauses, and over the window the hub's CPU (the
scheduler's nanosecond count) and its voluntary context switches (each a
sleep in epoll and a wake-up) are read. What is left is per-viewer upkeep:
the viewers' RTCP (receiver reports, REMB), ICE consent both ways, the
hub's sender reports and its per-viewer timers (a VP8 viewer's temporal
filter re-decides twice a second). The slope over N is its cost per viewer;
at 60 packets/s, 1 µs per forwarded packet is 60 µs of CPU per viewer per
second.

`--hub-roots DIR,DIR` runs the hub from other checkouts (e.g. exported
commits, each with its extension built) while the clients stay this one: an
A/B of the hub's code alone. Rounds alternate the roots' order.

    .venv/bin/python -m bench.upkeep --viewers 0,32,64 --seconds 20
    .venv/bin/python -m bench.upkeep --hub-roots /tmp/old,/tmp/new --viewers 0,48 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import forwarding as fw  # noqa: E402
from bench.machine import free_port, machine  # noqa: E402


@dataclass
class Row:
    root: str
    viewers: int
    cpu_percent: float
    wakeups: float
    load: float


async def start_hub(data: Path, workdir: Path, root: Path) -> tuple[asyncio.subprocess.Process, str]:
    """bench/forwarding's hub on the c path, run from `root`'s code."""
    port = free_port()
    env = fw.child_env() | fw.HUB_ENV | {"HUB_FORWARD": "c", "PYTHONPATH": str(root)}
    with (workdir / "hub.log").open("wb") as log:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "hub", "serve", "--data", str(data), "--port", str(port),
            stdout=log, stderr=asyncio.subprocess.STDOUT, stdin=asyncio.subprocess.DEVNULL,
            cwd=root, env=env, preexec_fn=fw._die_with_parent,
        )  # fmt: skip
    return proc, f"http://127.0.0.1:{port}"


async def measure(root: Path, n: int, seconds: float, per_worker: int, data: Path, token: str, workdir: Path) -> Row:
    budget = seconds + 120 + n
    async with contextlib.AsyncExitStack() as stack:
        hub, url = await start_hub(data, workdir, root)
        stack.push_async_callback(fw.stop_process, hub)
        publisher = await fw.Child.spawn("publisher", "publisher", workdir, budget)
        stack.push_async_callback(publisher.stop)
        counts = [min(per_worker, n - i) for i in range(0, n, per_worker)]
        workers = [await fw.Child.spawn(f"viewers{i}", "viewers", workdir, budget) for i in range(len(counts))]
        stack.push_async_callback(lambda: asyncio.gather(*(w.stop() for w in workers)))
        await fw.wait_healthy(hub, url, workdir / "hub.log")
        server = psutil.Process(hub.pid)
        published = await publisher.ask(
            "publish", "published", fw.CONNECT_TIMEOUT, url=url, token=token, room=fw.ROOM,
            stream={"width": 640, "height": 480, "bitrate": 400_000},
        )  # fmt: skip
        for worker, count in zip(workers, counts, strict=True):
            await worker.send("connect", url=url, token=token, stream=published["stream"], count=count, probe=False)
        await asyncio.gather(*(w.expect("connected", fw.CONNECT_TIMEOUT + 10) for w in workers))
        await publisher.ask("pause", "paused")
        # Past the first sender reports (1 s apart) and the connections' set-up.
        await asyncio.sleep(5)
        usage0, t0 = fw.Usage.of(server), time.monotonic()
        await asyncio.sleep(seconds)
        usage1, t1 = fw.Usage.of(server), time.monotonic()
        load = os.getloadavg()[0]
    window = t1 - t0
    return Row(
        root=str(root),
        viewers=n,
        cpu_percent=100 * (usage1.total - usage0.total) / window,
        wakeups=(usage1.switches - usage0.switches) / window,
        load=load,
    )


def slope(rows: list[Row], value: str) -> float | None:
    """Least squares of `value` over the number of viewers."""
    if len({r.viewers for r in rows}) < 2:
        return None
    xs = [r.viewers for r in rows]
    ys = [getattr(r, value) for r in rows]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)


async def run(args: argparse.Namespace) -> int:
    roots = [Path(r).resolve() for r in args.hub_roots.split(",")] if args.hub_roots else [ROOT]
    viewers = [int(v) for v in args.viewers.split(",")]
    info = machine()
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="bench-upkeep-") as tmp:
        workdir = Path(tmp)
        data = workdir / "hub-data"
        token = await fw.make_token(data)
        for round_ in range(args.rounds):
            for root in roots if round_ % 2 == 0 else roots[::-1]:
                for n in viewers:
                    row = await measure(root, n, args.seconds, args.per_worker, data, token, workdir)
                    fw.progress(
                        f"{root.name} N={n}: {row.cpu_percent:.2f}% of a core,"
                        f" {row.wakeups:.0f} wake-ups/s, load {row.load:.1f}"
                    )
                    rows.append(row)
    load = info["load_average_at_start"]
    print(f"Machine: {info['cpu']}, {info['cores']} cores; {started}; load average at start {load}")
    print(f"Publisher paused, {args.seconds:.0f} s windows, {args.rounds} round(s), c path\n")
    print("| hub code | N | CPU % of a core | wake-ups/s | load |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {Path(r.root).name} | {r.viewers} | {r.cpu_percent:.2f} | {r.wakeups:.0f} | {r.load:.1f} |")
    print()
    for root in roots:
        mine = [r for r in rows if r.root == str(root)]
        cpu, wake = slope(mine, "cpu_percent"), slope(mine, "wakeups")
        if cpu is None or wake is None:
            continue
        us = cpu / 100 * 1e6
        print(
            f"- {root.name}: per viewer {us:.0f} µs of CPU a second"
            f" ({us / 60:.1f} µs per forwarded packet at 60 packets/s), {wake:.2f} wake-ups a second"
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--viewers", default="0,32,64", help="comma-separated viewer counts (default 0,32,64)")
    parser.add_argument("--seconds", type=float, default=20, help="measurement window (default 20)")
    parser.add_argument("--rounds", type=int, default=1, help="repetitions, alternating the hub roots")
    parser.add_argument("--per-worker", type=int, default=8, help="viewers per worker process (default 8)")
    parser.add_argument("--hub-roots", help="comma-separated checkouts to run the hub from (default this one)")
    return asyncio.run(run(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
