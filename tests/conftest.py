"""Fixtures: real hub processes, real redis-server, tokens, loopback-only media."""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from playwright.async_api import Browser

from hub.config import Settings
from hub.core.tokens import Claims, issue
from hub.media.ice import use_addresses

from .browser import chromium

ROOT = Path(__file__).resolve().parent.parent
LOOPBACK_ONLY = '["127.0.0.1"]'

# Every peer connection the tests create offers only 127.0.0.1.
use_addresses(["127.0.0.1"])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_ports(count: int) -> int:
    """A port that is free with the `count - 1` after it, for a server that binds it again later (a
    Redis restarted on its port) or hub workers (each on port + its number). Below Linux's ephemeral
    range (32768 up), where the kernel hands out no ports of its own, so it stays free meanwhile."""
    while True:
        port = random.randrange(20000, 32768 - count)
        try:
            for offset in range(count):
                with socket.create_server(("127.0.0.1", port + offset)):
                    pass
        except OSError:
            continue
        return port


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port}")


async def wait_until(predicate, timeout: float, step: float = 0.1) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(step)


def run_hub_cli(data: Path, *args: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "hub", *args, "--data", str(data)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return out.stdout


@dataclass
class HubProcess:
    url: str
    data: Path
    proc: subprocess.Popen[bytes]
    log: Path

    def token(self, user: str, site: str, role: str, room: str | None = None, ttl: int | None = None) -> str:
        args = ["token", "--user", user, "--site", site, "--role", role]
        if room:
            args += ["--room", room]
        if ttl is not None:
            args += ["--ttl", str(ttl)]
        return run_hub_cli(self.data, *args).strip()

    def sign(self, user: str, site: str, role: str, room: str | None = None) -> str:
        """Like token(), signed in this process with the hub's secret: no CLI process per token
        (one costs seconds on a busy machine) and no check that the site exists."""
        return issue(Settings(data=self.data).signing_secret(), Claims(user=user, site=site, role=role, room=room))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def start_hub(data: Path, *extra: str, env: dict[str, str] | None = None) -> HubProcess:
    port = free_port()
    data.mkdir(parents=True, exist_ok=True)
    log = data / f"hub-{port}.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "hub", "serve", "--port", str(port), "--data", str(data), *extra],
        cwd=ROOT,
        env=os.environ | {"HUB_ICE_ADDRESSES": LOOPBACK_ONLY} | (env or {}),
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for_port(port, proc)
    except Exception:
        proc.kill()
        raise RuntimeError(f"hub did not start: {log.read_text()[-2000:]}") from None
    return HubProcess(f"http://127.0.0.1:{port}", data, proc, log)


class EventSocket:
    """An event WebSocket whose messages are collected in the background."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.messages: list[dict[str, Any]] = []
        self._task = asyncio.create_task(self._read())

    @classmethod
    async def open(cls, http: aiohttp.ClientSession, hub: HubProcess, token: str) -> EventSocket:
        sock = cls(await http.ws_connect(f"{hub.url}/ws?token={token}"))
        await sock.wait_for("hello")
        return sock

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                self.messages.append(json.loads(msg.data))

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m["type"] == kind]

    async def wait_for(self, kind: str, count: int = 1, timeout: float = 15) -> dict[str, Any]:
        await wait_until(lambda: len(self.of(kind)) >= count, timeout)
        return self.of(kind)[count - 1]

    async def settle(self) -> None:
        """A round trip: events published before it have been forwarded."""
        pongs = len(self.of("pong"))
        await self.ws.send_json({"type": "ping"})
        await self.wait_for("pong", pongs + 1)

    async def close(self) -> None:
        await self.ws.close()
        await self._task


@pytest.fixture(scope="session")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubProcess]:
    """One hub process shared by the tests that need only an ordinary hub."""
    process = start_hub(tmp_path_factory.mktemp("hub"))
    yield process
    process.stop()


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    """A headless Debian Chromium with fake media, media on loopback only."""
    async with chromium() as b:
        yield b


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server on loopback, private to this test run."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed (the README's test command installs it)")
    port = free_port()
    workdir = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen(
        [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL,
    )
    wait_for_port(port, proc)  # type: ignore[arg-type]
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(10)
