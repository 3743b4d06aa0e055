"""What the database costs the reads a cluster serves most: the case list, a
case's detail and an operator's console wall layouts, each under load from
50 concurrent clients, on SQLite and on PostgreSQL.

For each backend a fresh hub process (`python -m hub serve`) gets the same
records through its API: CASES mediation cases opened at the two villages of
one county, and the county operator's wall layouts (4 layouts of 16 panes).
Then, one read after another, CLIENTS coroutines each send their next request
as soon as the last is answered, for SECONDS after a warm-up second. Beside
the three database reads the same run measures a reference read that touches
no database (a room, from live state in memory): the HTTP, token and JSON
cost of a request on this machine at that moment, so that what is left is
the database's. PostgreSQL is a throwaway cluster (Debian's postgresql,
started the way the tests start it: durability off, on 127.0.0.1) on the
same machine as the hub and the clients.

Run from the repository root (about a minute and a half):

    .venv/bin/python -m bench.database
    .venv/bin/python -m bench.database --clients 50 --seconds 5 --cases 200 --json db.json

The report (a markdown table) goes to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import secrets
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import psycopg

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python bench/database.py` puts bench/, not the repository, on the path
    sys.path.insert(0, str(ROOT))

from bench.forwarding import percentile  # noqa: E402
from bench.harness import say  # noqa: E402
from bench.machine import machine  # noqa: E402
from tests.conftest import HubProcess, postgres_cluster, start_hub  # noqa: E402

COUNTY = "guinan"
VILLAGES = ("rianxiuma", "shangzhai")
REFERENCE_ROOM = "site-guinan"
WARMUP = 1.0


@dataclass
class Row:
    backend: str
    read: str
    requests: int
    errors: int
    seconds: float
    requests_per_second: float
    p50_ms: float
    p95_ms: float
    bytes_per_answer: int
    hub_cpu: float
    database_cpu: float | None

    @property
    def cpu_ms_per_request(self) -> float:
        """CPU of the hub and PostgreSQL per answer: on a busy machine, where
        requests/s says as much about the neighbours as about the hub, this
        is what stays."""
        per_second = (self.hub_cpu + (self.database_cpu or 0.0)) / 100
        return 1000 * per_second / max(self.requests_per_second, 0.1)


def cpu_seconds(procs: Iterator[psutil.Process]) -> float:
    total = 0.0
    for proc in procs:
        try:
            times = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue  # a backend that ended meanwhile
        total += times.user + times.system
    return total


def tree(proc: psutil.Process) -> Iterator[psutil.Process]:
    """A process and its children (the PostgreSQL server's backends)."""
    yield proc
    yield from proc.children(recursive=True)


async def load(
    http: aiohttp.ClientSession, urls: list[str], token: str, clients: int, seconds: float
) -> tuple[list[float], int, int, float]:
    """Latencies (s), errors, bytes of the last answer and the window's length:
    `clients` loops, each asking a random one of `urls` when its last answer came."""
    latencies: list[float] = []
    errors = 0
    size = 0
    headers = {"Authorization": f"Bearer {token}"}
    started = time.monotonic()
    measuring_from = started + WARMUP
    until = measuring_from + seconds

    async def client() -> None:
        nonlocal errors, size
        while (now := time.monotonic()) < until:
            async with http.get(random.choice(urls), headers=headers) as r:
                body = await r.read()
            done = time.monotonic()
            if now < measuring_from:
                continue
            if r.status != 200:
                errors += 1
            else:
                latencies.append(done - now)
                size = len(body)

    await asyncio.gather(*(client() for _ in range(clients)))
    return latencies, errors, size, time.monotonic() - measuring_from


async def seed(http: aiohttp.ClientSession, hub: HubProcess, cases: int) -> tuple[list[str], str]:
    """Open `cases` cases and save the operator's layouts; the case ids and the operator's token."""
    mediators = {v: hub.sign(f"m-{v}", v, "mediator") for v in VILLAGES}
    operator = hub.sign("op-bench", COUNTY, "operator")
    semaphore = asyncio.Semaphore(8)

    async def open_case(i: int) -> str:
        village = VILLAGES[i % len(VILLAGES)]
        body = {
            "title": f"宅基地边界纠纷 {i}",
            "dispute_type": "land",
            "site_id": village,
            "parties": [
                {"name": "张三", "role": "applicant", "phone": "139 0000 0000"},
                {"name": "李四", "role": "respondent", "phone": "139 0000 0001"},
            ],
            "summary": "两户因院墙位置发生争执，村委会调解未果" * 3,
        }
        async with (
            semaphore,
            http.post(
                f"{hub.url}/api/cases", json=body, headers={"Authorization": f"Bearer {mediators[village]}"}
            ) as r,
        ):
            if r.status != 201:
                raise RuntimeError(f"opening a case: {r.status} {await r.text()}")
            return str((await r.json())["id"])

    ids = list(await asyncio.gather(*(open_case(i) for i in range(cases))))
    panes = [{"site_id": VILLAGES[i % 2]} for i in range(16)]
    walls = [{"name": f"wall {n}", "grid": 16, "panes": panes, "patrol": {"feeds": panes[:8]}} for n in range(4)]
    layouts = {"layouts": walls, "current": "wall 0"}
    async with http.put(
        f"{hub.url}/api/console/layouts", json=layouts, headers={"Authorization": f"Bearer {operator}"}
    ) as r:
        if r.status != 200:
            raise RuntimeError(f"saving layouts: {r.status} {await r.text()}")
    return ids, operator


async def measure_backend(
    backend: str, data: Path, env: dict[str, str], db_proc: psutil.Process | None, args: argparse.Namespace
) -> list[Row]:
    hub = start_hub(data, env={"HUB_SNAPSHOT_SECONDS": "0"} | env)
    rows = []
    try:
        connector = aiohttp.TCPConnector(limit=args.clients)
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as http:
            say(f"{backend}: opening {args.cases} cases")
            ids, operator = await seed(http, hub, args.cases)
            reads = {
                "reference: a room (no database)": [f"{hub.url}/api/rooms/{REFERENCE_ROOM}"],
                f"case list ({args.cases} cases)": [f"{hub.url}/api/cases?site={COUNTY}"],
                "case detail": [f"{hub.url}/api/cases/{case_id}" for case_id in ids],
                "console layouts": [f"{hub.url}/api/console/layouts"],
            }
            hub_proc = psutil.Process(hub.proc.pid)
            for read, urls in reads.items():
                say(f"{backend}: {read}, {args.clients} clients, {args.seconds:g} s")
                hub_before = cpu_seconds(iter([hub_proc]))
                db_before = cpu_seconds(tree(db_proc)) if db_proc else 0.0
                latencies, errors, size, window = await load(http, urls, operator, args.clients, args.seconds)
                # CPU over warm-up and window alike: the load was the same throughout.
                spent = window + WARMUP
                hub_cpu = 100 * (cpu_seconds(iter([hub_proc])) - hub_before) / spent
                db_cpu = 100 * (cpu_seconds(tree(db_proc)) - db_before) / spent if db_proc else None
                rows.append(
                    Row(
                        backend,
                        read,
                        len(latencies),
                        errors,
                        round(window, 2),
                        round(len(latencies) / window, 1),
                        round(1000 * (percentile(latencies, 50) or 0), 1),
                        round(1000 * (percentile(latencies, 95) or 0), 1),
                        size,
                        round(hub_cpu, 1),
                        None if db_cpu is None else round(db_cpu, 1),
                    )
                )
    finally:
        hub.stop()
    return rows


def report(rows: list[Row], args: argparse.Namespace, info: dict[str, Any], runtime: float) -> str:
    lines = [
        f"Machine: {info['cpu']}, {info['cores']} cores; Python {info['python']}; {info['date']};"
        f" load average at start {info['load_average_at_start']}",
        f"Load: {args.clients} concurrent clients (one process, aiohttp) per read, {args.seconds:g} s each after"
        f" {WARMUP:g} s warm-up; one hub process; all on 127.0.0.1; runtime {runtime:.0f} s",
        "",
        "| backend | read | requests/s | p50 ms | p95 ms | errors | answer bytes | hub CPU % | PostgreSQL CPU %"
        " | CPU ms per request |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        db = "–" if r.database_cpu is None else f"{r.database_cpu:.0f}"
        lines.append(
            f"| {r.backend} | {r.read} | {r.requests_per_second:.0f} | {r.p50_ms:.1f} | {r.p95_ms:.1f} |"
            f" {r.errors} | {r.bytes_per_answer} | {r.hub_cpu:.0f} | {db} | {r.cpu_ms_per_request:.2f} |"
        )
    return "\n".join(lines)


async def run(args: argparse.Namespace) -> None:
    started = time.monotonic()
    info = machine()
    key = secrets.token_urlsafe(48)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for backend in ("sqlite", "postgresql"):
            (root / backend).mkdir()
            (root / backend / "secret.key").write_text(key)
        rows += await measure_backend("SQLite", root / "sqlite", {}, None, args)
        say("starting a throwaway PostgreSQL cluster")
        with postgres_cluster() as server:
            with psycopg.connect(f"{server.url}/postgres", autocommit=True) as admin:
                admin.execute("CREATE DATABASE bench")
            env = {"HUB_DATABASE": f"{server.url}/bench"}
            rows += await measure_backend("PostgreSQL", root / "postgresql", env, psutil.Process(server.proc.pid), args)
    runtime = time.monotonic() - started
    print(report(rows, args, info, runtime))
    if args.json:
        figures = [asdict(r) | {"cpu_ms_per_request": r.cpu_ms_per_request} for r in rows]
        args.json.write_text(json.dumps({"machine": info, "rows": figures}, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per read and backend")
    parser.add_argument("--cases", type=int, default=200)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
