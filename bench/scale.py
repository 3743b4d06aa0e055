"""The 8 a.m. join storm: one hub process, a site tree with the seed's counts
per level (1 province, 8 prefectures, 45 counties, 414 townships, 4,486
villages), 5,000 event sockets of village terminals connecting at once and
20 consoles (the province, its prefectures, some counties) monitoring.

Prints: connect time, sockets dropped, hub CPU and RSS (during the storm and
idle), presence-event latency to the consoles (p50/p95), bytes sent to each
console per presence change, and a console's first load (bytes, ms).

The first load is a big tree's (GET /api/console/branch: the province and its
8 prefectures with their counts), beside the compact status of every live
site it replaces. A console here otherwise does what web/js/console.js does: one status load, then,
if the hub's `monitor` ack carries a sequence number (`seq`), it applies the
deltas carried by the socket; otherwise (the older hub) it fetches the
status again, debounced by 400 ms, after every event that may change it.

    .venv/bin/python -m bench.scale [--sockets 5000] [--changes 40] [--workers 4]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from bench.harness import ROOT, cpu_seconds, running_hub, say
from bench.machine import machine
from hub.core.tokens import Claims, issue

#: The seed's centres per level below the province.
PER_LEVEL = (("prefecture", 8), ("county", 45), ("township", 414), ("village", 4486))
#: What web/js/console.js fetches the status again after (the older hub).
STATUS_EVENTS = frozenset(
    {
        "participant-joined", "participant-left", "stream-added", "stream-removed", "room-opened",
        "room-closed", "presence", "camera-status", "alert-raised", "alert-cleared",
    }
)  # fmt: skip
REFETCH_DEBOUNCE = 0.4


def site_tree() -> list[dict[str, str | None]]:
    """A tree with the seed's counts per level, children spread evenly over parents."""
    sites: list[dict[str, str | None]] = [{"id": "prov", "name": "省", "level": "province", "parent": None}]
    parents = ["prov"]
    for level, count in PER_LEVEL:
        ids = [f"{level[0]}{i}" for i in range(count)]
        for i, site_id in enumerate(ids):
            sites.append({"id": site_id, "name": site_id, "level": level, "parent": parents[i * len(parents) // count]})
        parents = ids
    return sites


def ancestors(by_id: dict[str, dict[str, str | None]], site_id: str) -> list[str]:
    out: list[str] = []
    current: str | None = site_id
    while current is not None:
        out.append(current)
        current = by_id[current]["parent"]
    return out


@dataclass
class ConsoleClient:
    """One monitoring console: its socket, what it received, its re-fetches."""

    site: str
    token: str
    url: str
    http: aiohttp.ClientSession
    ws: aiohttp.ClientWebSocketResponse | None = None
    ws_bytes: int = 0
    fetch_bytes: int = 0
    fetches: int = 0
    deltas: bool = False
    #: site id -> receive times of presence events naming it.
    presence: dict[str, list[float]] = field(default_factory=dict)
    _refetch: asyncio.Task[None] | None = None
    reader: asyncio.Task[None] | None = None

    async def load(self, compact: bool = False, path: str = "/api/console/status") -> tuple[int, float]:
        """GET the status as web/js/console.js does: compact where the hub keeps
        consoles by deltas; or (path /api/console/branch) a big tree's first
        load, counts per branch."""
        start = time.perf_counter()
        headers = {"Authorization": f"Bearer {self.token}"}
        url = f"{self.url}{path}"
        params = {"site": self.site} | ({"compact": "1"} if compact else {})
        async with self.http.get(url, params=params, headers=headers) as response:
            body = await response.read()
            response.raise_for_status()
        return len(body), (time.perf_counter() - start) * 1000

    async def open(self) -> None:
        self.ws = await self.http.ws_connect(f"{self.url}/ws?token={self.token}", max_msg_size=0)
        await self.ws.send_json({"type": "monitor", "on": True})
        while True:
            msg = await self.ws.receive_json()
            if msg.get("type") == "ack" and msg.get("of") == "monitor":
                self.deltas = "seq" in msg
                break
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.ws is not None
        async for msg in self.ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            now = time.perf_counter()
            self.ws_bytes += len(msg.data.encode())
            event = json.loads(msg.data)
            if event.get("type") == "presence":
                self.presence.setdefault(event["site_id"], []).append(now)
            if not self.deltas and event.get("type") in STATUS_EVENTS and self._refetch is None:
                self._refetch = asyncio.create_task(self._fetch_later())

    async def _fetch_later(self) -> None:
        await asyncio.sleep(REFETCH_DEBOUNCE)
        self._refetch = None
        size, _ = await self.load()
        self.fetch_bytes += size
        self.fetches += 1

    def sent(self) -> int:
        return self.ws_bytes + self.fetch_bytes


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def terminal(http: aiohttp.ClientSession, url: str, token: str) -> aiohttp.ClientWebSocketResponse:
    ws = await http.ws_connect(f"{url}/ws?token={token}", max_msg_size=0, heartbeat=None)
    hello = await ws.receive_json()
    assert hello["type"] == "hello", hello
    return ws


async def drain(ws: aiohttp.ClientWebSocketResponse) -> None:
    async for _ in ws:
        pass


async def worker(url: str, tokens_file: Path) -> None:
    """One of the storm's client processes (one process alone would be the
    bottleneck): once told to go (a line on stdin), connects its sockets at
    once, prints when all are greeted, reads them until stdin closes, then
    prints how many the hub closed."""
    tokens = tokens_file.read_text().split()
    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        print(json.dumps({"ready": True}), flush=True)
        await loop.run_in_executor(None, sys.stdin.readline)
        results = await asyncio.gather(*(terminal(http, url, t) for t in tokens), return_exceptions=True)
        sockets = [r for r in results if isinstance(r, aiohttp.ClientWebSocketResponse)]
        print(json.dumps({"connected": len(sockets), "failed": len(results) - len(sockets)}), flush=True)
        readers = [asyncio.create_task(drain(ws)) for ws in sockets]
        await loop.run_in_executor(None, sys.stdin.read)
        closed = [ws.close_code for ws in sockets if ws.closed]
        print(json.dumps({"closed": len(closed), "codes": sorted({c for c in closed if c})}), flush=True)
        for ws in sockets:
            await ws.close()
        await asyncio.gather(*readers, return_exceptions=True)


async def storm(url: str, tokens: list[str], data: Path, workers: int) -> list[asyncio.subprocess.Process]:
    """Start the workers; returns them once each is ready to connect."""
    procs = []
    for i in range(workers):
        part = data / f"tokens-{i}.txt"
        part.write_text("\n".join(tokens[i::workers]))
        procs.append(
            await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bench.scale", "--worker", url, str(part),
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, cwd=ROOT,
            )
        )  # fmt: skip
    for p in procs:
        await report(p)
    return procs


async def report(proc: asyncio.subprocess.Process) -> dict[str, int]:
    assert proc.stdout is not None
    return json.loads(await proc.stdout.readline())


async def run(args: argparse.Namespace) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the hub inherits it
    info = machine()
    sites = site_tree()
    by_id = {s["id"]: s for s in sites}
    villages = [s["id"] for s in sites if s["level"] == "village"]
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        data = Path(tmp)
        (data / "sites.json").write_text(json.dumps(sites))
        env = {"HUB_SITES": str(data / "sites.json"), "HUB_SNAPSHOT_SECONDS": "0"}
        async with running_hub(data, env, operator_site="prov") as hub:
            secret = (data / "secret.key").read_text().strip()

            def token(user: str, site: str, role: str) -> str:
                return issue(secret, Claims(user=user, site=site, role=role))

            proc = hub.psutil()
            connector = aiohttp.TCPConnector(limit=0)
            async with aiohttp.ClientSession(connector=connector) as http:
                console_sites = ["prov"] + [f"p{i}" for i in range(8)] + [f"c{i}" for i in range(11)]
                consoles = [
                    ConsoleClient(site, token(f"op-{site}", site, "operator"), hub.url, http) for site in console_sites
                ]
                for c in consoles:
                    await c.open()
                say(f"{len(consoles)} consoles monitoring; deltas: {consoles[0].deltas}")
                await asyncio.sleep(2)

                tokens = [token(f"t{i}", villages[i % len(villages)], "terminal") for i in range(args.sockets)]
                workers = await storm(hub.url, tokens, data, args.workers)
                await asyncio.sleep(2)
                cpu0, t0 = cpu_seconds(proc), time.perf_counter()
                for w in workers:
                    assert w.stdin is not None
                    w.stdin.write(b"go\n")
                connected = [await report(w) for w in workers]
                connect_s = time.perf_counter() - t0
                storm_cpu = cpu_seconds(proc) - cpu0
                n_sockets = sum(c["connected"] for c in connected)
                failed = sum(c["failed"] for c in connected)
                say(f"{n_sockets} sockets connected in {connect_s:.1f} s ({failed} failed)")

                await asyncio.sleep(5)  # the storm's presence events reach the consoles
                # A console opened now sees the whole province online.
                first_bytes, first_ms = await consoles[0].load(path="/api/console/branch")
                compact_bytes, compact_ms = await consoles[0].load(compact=consoles[0].deltas)
                rss_mb = proc.memory_info().rss / 2**20
                cpu1, t1 = cpu_seconds(proc), time.perf_counter()
                await asyncio.sleep(args.idle)
                idle_pct = (cpu_seconds(proc) - cpu1) / (time.perf_counter() - t1) * 100

                # Presence changes: a village goes online and offline again, one change at a time.
                for c in consoles:
                    c.presence.clear()
                sent_before = [c.sent() for c in consoles]
                latencies: list[float] = []
                changes = 0
                for i in range(args.changes // 2):
                    village = villages[(i * 97) % len(villages)]
                    watchers = [c for c in consoles if c.site in ancestors(by_id, village)]
                    for step in ("online", "offline"):
                        seen = [len(c.presence.get(village, [])) for c in watchers]
                        start = time.perf_counter()
                        if step == "online":
                            ws = await terminal(http, hub.url, token(f"x{i}", village, "terminal"))
                            reader = asyncio.create_task(drain(ws))
                        else:
                            await ws.close()
                            await reader
                        deadline = start + 5
                        while time.perf_counter() < deadline and any(
                            len(c.presence.get(village, [])) <= n for c, n in zip(watchers, seen, strict=True)
                        ):
                            await asyncio.sleep(0.002)
                        for c, n in zip(watchers, seen, strict=True):
                            times = c.presence.get(village, [])
                            if len(times) > n:
                                latencies.append((times[n] - start) * 1000)
                        changes += 1
                        await asyncio.sleep(1.0)  # the older console's debounced re-fetch completes
                per_change = [(c.sent() - b) / changes for c, b in zip(consoles, sent_before, strict=True)]
                province_per_change = per_change[0]

                for w in workers:
                    assert w.stdin is not None
                    w.stdin.close()
                ends = [await report(w) for w in workers]
                for w in workers:
                    await w.wait()
                dropped = sum(e["closed"] for e in ends) + failed
                close_codes = sorted({c for e in ends for c in e["codes"]})
                consoles_dropped = sum(1 for c in consoles if c.ws is not None and c.ws.closed)
                for c in consoles:
                    if c.ws is not None:
                        await c.ws.close()
                await asyncio.gather(*(c.reader for c in consoles if c.reader), return_exceptions=True)

    print(f"Machine: {info['cpu']}, {info['cores']} cores; Python {info['python']}; {info['date']}; "
          f"load average at start {', '.join(map(str, info['load_average_at_start']))}")  # fmt: skip
    print(f"Tree: {len(sites)} sites; {args.sockets} village terminal sockets; {len(consoles)} consoles; "
          f"{changes} presence changes")  # fmt: skip
    print("| figure | value |")
    print("| --- | ---: |")
    rows = [
        ("connect time of the storm (s)", f"{connect_s:.1f}"),
        ("sockets dropped or refused", f"{dropped}" + (f" (close codes {close_codes})" if close_codes else "")),
        ("consoles dropped", f"{consoles_dropped}"),
        ("hub CPU during the storm (s)", f"{storm_cpu:.1f}"),
        ("hub RSS with every socket open (MB)", f"{rss_mb:.0f}"),
        (f"hub idle CPU with {n_sockets} sockets (% of a core, {args.idle:.0f} s)", f"{idle_pct:.1f}"),
        ("presence latency to consoles p50 / p95 (ms)",
         f"{statistics.median(latencies):.0f} / {percentile(latencies, 95):.0f}" if latencies else "none arrived"),
        ("presence events that reached their consoles", f"{len(latencies)}"),
        ("bytes to the province console per presence change", f"{province_per_change:.0f}"),
        ("bytes to a console per presence change, mean of 20", f"{statistics.mean(per_change):.0f}"),
        ("status re-fetches by the consoles", f"{sum(c.fetches for c in consoles)}"),
        ("province console's first load after the storm: 8 branches' counts (bytes)", f"{first_bytes}"),
        ("province console's first load after the storm: 8 branches' counts (ms)", f"{first_ms:.0f}"),
        ("the province's compact status, every live site (bytes)", f"{compact_bytes}"),
        ("the province's compact status, every live site (ms)", f"{compact_ms:.0f}"),
    ]  # fmt: skip
    for name, value in rows:
        print(f"| {name} | {value} |")
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sockets", type=int, default=5000)
    parser.add_argument("--changes", type=int, default=40, help="presence changes (online + offline)")
    parser.add_argument("--idle", type=float, default=20.0, help="seconds of idle CPU measurement")
    parser.add_argument("--workers", type=int, default=4, help="client processes of the storm")
    parser.add_argument("--worker", nargs=2, metavar=("URL", "TOKENS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        asyncio.run(worker(args.worker[0], Path(args.worker[1])))
    else:
        asyncio.run(run(args))


if __name__ == "__main__":
    main()
