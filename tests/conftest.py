"""Fixtures: real hub processes, real redis-server and PostgreSQL, tokens, loopback-only media."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
import pytest
from playwright.async_api import Browser

from hub.config import Settings
from hub.core.tokens import Claims, issue
from hub.media.forward import FORWARD_PATHS, current_path, use_path
from hub.media.ice import use_addresses

from .browser import chromium
from .netem import Network

ROOT = Path(__file__).resolve().parent.parent
LOOPBACK_ONLY = '["127.0.0.1"]'

# Every peer connection the tests create offers only 127.0.0.1.
use_addresses(["127.0.0.1"])


@pytest.fixture(params=FORWARD_PATHS)
def forward_path(request: pytest.FixtureRequest) -> Iterator[str]:
    """Runs a test once on each send path of hub/media/forward.py, in this process.

    The "c" path must really be there: `pip install -e .` builds it (in a
    worktree: `python setup.py build_ext --inplace`)."""
    previous = current_path()
    assert use_path(request.param) == request.param, "hub.media._fastsend is not built"
    yield request.param
    use_path(previous)


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

    def token(
        self, user: str, site: str, role: str, room: str | None = None, ttl: int | None = None, name: str | None = None
    ) -> str:
        args = ["token", "--user", user, "--site", site, "--role", role]
        if room:
            args += ["--room", room]
        if name:
            args += ["--name", name]
        if ttl is not None:
            args += ["--ttl", str(ttl)]
        return run_hub_cli(self.data, *args).strip()

    def sign(self, user: str, site: str, role: str, room: str | None = None) -> str:
        """Like token(), signed in this process with the hub's secret: no CLI process per token
        (one costs seconds on a busy machine) and no check that the site exists."""
        return issue(Settings(data=self.data).keys(), Claims(user=user, site=site, role=role, room=room))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


#: Lines of each hub's log a failed test's report shows.
LOG_TAIL = 40
_TEST_STARTED = pytest.StashKey[float]()


def pytest_runtest_setup(item: pytest.Item) -> None:
    item.stash[_TEST_STARTED] = time.time()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A failed test's report ends with the tail of every hub log written
    during it: CI keeps no files, and a hub's side is half of every failure."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    started = item.stash.get(_TEST_STARTED, None)
    if report.when != "call" or not report.failed or started is None:
        return
    for log in sorted(_HUB_LOGS, key=lambda log: log.name):
        with contextlib.suppress(OSError):
            if log.stat().st_mtime >= started:
                tail = log.read_text(errors="replace").splitlines()[-LOG_TAIL:]
                report.sections.append((f"hub log {log}", "\n".join(tail)))


#: The log of every hub process the tests started.
_HUB_LOGS: list[Path] = []


def start_hub(data: Path, *extra: str, env: dict[str, str] | None = None) -> HubProcess:
    port = free_port()
    data.mkdir(parents=True, exist_ok=True)
    log = data / f"hub-{port}.log"
    _HUB_LOGS.append(log)
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


@contextlib.asynccontextmanager
async def event_socket(http: aiohttp.ClientSession, hub: HubProcess, token: str) -> AsyncIterator[EventSocket]:
    """An open event socket, closed on the way out."""
    sock = await EventSocket.open(http, hub, token)
    try:
        yield sock
    finally:
        await sock.close()


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
def network() -> Iterator[Network]:
    """Network namespaces for one test (tests/netem.py), removed afterwards even if it fails."""
    net = Network()
    try:
        yield net
    finally:
        net.close()


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


POSTGRES_BIN = Path("/usr/lib/postgresql/15/bin")


def _as_postgres_user() -> dict[str, Any]:
    """initdb and postgres refuse to run as root: as root, they run as Debian's postgres user
    (the child itself, not a runuser wrapper, so that signals reach the server)."""
    return {"user": "postgres", "group": "postgres", "extra_groups": []} if os.geteuid() == 0 else {}


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A throwaway PostgreSQL cluster private to this test run; its URL without a database name."""
    if not (POSTGRES_BIN / "initdb").exists():
        pytest.fail("postgresql is not installed (the README's test command installs it)")
    with postgres_cluster() as server:
        yield server.url


@dataclass
class PostgresServer:
    url: str
    proc: subprocess.Popen[bytes]


@contextlib.contextmanager
def postgres_cluster() -> Iterator[PostgresServer]:
    """A throwaway PostgreSQL cluster (Debian's postgresql) on 127.0.0.1 (the
    tests' and bench/database.py's); its URL has no database name. Durability
    is off: it is deleted at the end."""
    # Not under pytest's tmp_path: that is root's own (mode 0700), and the server runs as postgres.
    workdir = Path(tempfile.mkdtemp(prefix="hub-pg-"))
    data = workdir / "data"
    if os.geteuid() == 0:
        shutil.chown(workdir, "postgres", "postgres")
    subprocess.run(
        [str(POSTGRES_BIN / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "--encoding=UTF8",
         "--locale=C.UTF-8"],
        check=True,
        capture_output=True,
        timeout=60,
        cwd=workdir,
        **_as_postgres_user(),
    )  # fmt: skip
    port = free_port()
    log = (workdir / "postgres.log").open("wb")
    proc = subprocess.Popen(
        [str(POSTGRES_BIN / "postgres"), "-D", str(data), "-k", str(workdir), "-h", "127.0.0.1", "-p", str(port),
         "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=workdir,
        **_as_postgres_user(),
    )  # fmt: skip
    try:
        wait_for_port(port, proc)  # type: ignore[arg-type]
        # The port opens before the server accepts logins: wait for a query to succeed.
        deadline = time.monotonic() + 20
        while True:
            try:
                psycopg.connect(f"postgresql://postgres@127.0.0.1:{port}/postgres", connect_timeout=2).close()
                break
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        yield PostgresServer(f"postgresql://postgres@127.0.0.1:{port}", proc)
    finally:
        proc.send_signal(signal.SIGINT)  # a fast shutdown: sessions are ended, nothing is kept anyway
        proc.wait(20)
        log.close()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server: str) -> str:
    """A new, empty database on the test run's PostgreSQL server."""
    name = f"t_{secrets.token_hex(6)}"
    with psycopg.connect(f"{postgres_server}/postgres", autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    return f"{postgres_server}/{name}"


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each test that takes it runs on both backends: a SQLite file, and a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'hub.sqlite3'}"
    return str(request.getfixturevalue("postgres_url"))
