"""`python -m hub serve --workers N`: N hub processes on one port, supervised."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import aiohttp

from client import bot
from hub.cli.serve import RESTART_AFTER_SECONDS

from .conftest import LOOPBACK_ONLY, ROOT, HubProcess, free_port, free_ports, wait_for_port, wait_until


def test_workers_are_refused_without_redis(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "hub", "serve", "--workers", "2", "--port", str(free_port()), "--data", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    assert "--workers needs --redis" in out.stderr


async def _node(port: int) -> str:
    # A connection of its own each time: the kernel picks a worker per connection.
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/healthz") as r:
        return str((await r.json())["node"])


def _worker_pids(log: Path) -> dict[int, tuple[int, float]]:
    """Worker number -> (pid, wall-clock start) of its latest start, as the supervisor logged it."""
    found = re.findall(r"^(\S+ \S+) INFO hub: supervisor: worker (\d+) is pid (\d+)", log.read_text(), re.M)
    return {int(w): (int(p), datetime.strptime(t, "%Y-%m-%d %H:%M:%S,%f").timestamp()) for t, w, p in found}


async def test_workers_share_one_port_and_a_dead_worker_is_restarted(tmp_path: Path, redis_url: str) -> None:
    port = free_ports(3)
    log = tmp_path / "supervisor.log"
    supervisor = subprocess.Popen(
        [sys.executable, "-m", "hub", "serve", "--workers", "2", "--port", str(port), "--data", str(tmp_path)]
        + ["--redis", redis_url],
        cwd=ROOT,
        env=os.environ | {"HUB_ICE_ADDRESSES": LOOPBACK_ONLY, "HUB_NODE_TTL": "3"},
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        for worker_port in (port, port + 1, port + 2):
            wait_for_port(worker_port, supervisor, timeout=60)
        # A worker's own port listens before it serves; once it answers there, it serves the shared port too.
        first, second = await _node(port + 1), await _node(port + 2)
        nodes = set()
        for _ in range(40):  # two workers: 40 connections all landing on one is a 2^-39 chance
            nodes.add(await _node(port))
        assert nodes == {first, second}

        # A stream hosted by worker 1, viewed through worker 2: redirected to worker 1's own port.
        hub = HubProcess(f"http://127.0.0.1:{port}", tmp_path, supervisor, log)
        token = hub.sign("m-heping", "heping", "mediator")
        async with aiohttp.ClientSession() as http:
            publisher = await bot.publish(
                http, f"http://127.0.0.1:{port + 1}", token, "site-heping", [bot.SyntheticVideo("vp8", 160, 120, 15)]
            )
            viewer = await bot.view(http, f"http://127.0.0.1:{port + 2}", token, publisher.resource_id, ("video",))
            try:
                assert viewer.location.startswith(f"http://127.0.0.1:{port + 1}/")
                await wait_until(lambda: len(viewer.logs["video"].frames) >= 10, 20)
            finally:
                await viewer.close()
                await publisher.close()

        # A worker that dies after running a while is started again, as a new node.
        dead, since = _worker_pids(log)[2]
        time.sleep(max(0.0, since + RESTART_AFTER_SECONDS + 1 - time.time()))
        os.kill(dead, signal.SIGKILL)
        await wait_until(lambda: _worker_pids(log)[2][0] != dead, 15)
        wait_for_port(port + 2, supervisor, timeout=60)
        replacement = await _node(port + 2)
        assert replacement not in nodes
        assert supervisor.poll() is None

        # SIGTERM stops every worker and the supervisor exits 0.
        workers = [pid for pid, _ in _worker_pids(log).values()]
        supervisor.send_signal(signal.SIGTERM)
        assert supervisor.wait(30) == 0
        for pid in workers:
            assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
            supervisor.wait(10)


def test_a_worker_that_cannot_start_stops_the_supervisor_non_zero(tmp_path: Path, redis_url: str) -> None:
    port = free_ports(3)
    with socket.create_server(("127.0.0.1", port + 1)):  # worker 1's own port is taken: it dies at once
        out = subprocess.run(
            [sys.executable, "-m", "hub", "serve", "--workers", "2", "--port", str(port), "--data", str(tmp_path)]
            + ["--redis", redis_url],
            cwd=ROOT,
            env=os.environ | {"HUB_ICE_ADDRESSES": LOOPBACK_ONLY},
            capture_output=True,
            text=True,
            timeout=90,
        )
    assert out.returncode == 1
    assert re.search(r"worker 1 exited \(1\) [\d.]+ s after starting; stopping", out.stdout + out.stderr)
