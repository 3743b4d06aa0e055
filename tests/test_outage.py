"""Redis outages: media keeps flowing, requests that need Redis get a 503,
and a fresh, empty Redis gets every process's records back without a restart."""

from __future__ import annotations

import asyncio
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as aioredis
from playwright.async_api import Browser, expect

from client import bot

from .conftest import EventSocket, HubProcess, free_ports, start_hub, wait_for_port, wait_until

#: The outage the done criterion names; it bounds this test (~60-80 s in all).
OUTAGE_SECONDS = 30
#: How soon after a fresh Redis starts both processes must list their records again.
RECOVERY_SECONDS = 10


class PrivateRedis:
    """A redis-server of this test alone, so that killing it harms no other test."""

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed (the README's test command installs it)")
        self.binary = binary
        self.workdir = workdir
        self.port = free_ports(1)  # bound again after the outage: nothing else may take it meanwhile
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        # No persistence: a restart comes back empty, the hardest case.
        args = ["--bind", "127.0.0.1", "--port", str(self.port), "--save", "", "--appendonly", "no"]
        self.proc = subprocess.Popen([self.binary, *args, "--dir", str(self.workdir)], stdout=subprocess.DEVNULL)
        wait_for_port(self.port, self.proc)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path)
    server.start()
    yield server
    server.kill()


@pytest.fixture
def two_hubs(tmp_path: Path, private_redis: PrivateRedis) -> Iterator[tuple[HubProcess, HubProcess]]:
    # A 3 s heartbeat (beats every second), so the others notice a swept or returning process within seconds.
    env = {"HUB_NODE_TTL": "3"}
    first = start_hub(tmp_path / "hubs", "--redis", private_redis.url, env=env)
    second = start_hub(tmp_path / "hubs", "--redis", private_redis.url, env=env)
    yield first, second
    first.stop()
    second.stop()


async def _status(http: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None) -> int:
    async with http.get(url, headers=headers or {}) as r:
        await r.read()
        return r.status


async def _terminals(http: aiohttp.ClientSession, hub: HubProcess, site: str, headers: dict[str, str]) -> int:
    """Event sockets of a site's people online, as the console counts them."""
    async with http.get(f"{hub.url}/api/console/status?site={site}", headers=headers) as r:
        assert r.status == 200, await r.text()
        return next(row["terminals"] for row in (await r.json())["sites"] if row["id"] == site)


async def _room(http: aiohttp.ClientSession, hub: HubProcess, room_id: str, headers: dict[str, str]) -> dict:
    async with http.get(f"{hub.url}/api/rooms/{room_id}", headers=headers) as r:
        return {"status": r.status, "content_type": r.content_type} | await r.json(content_type=None)


async def test_redis_killed_for_30_s_under_a_live_two_process_room(
    two_hubs: tuple[HubProcess, HubProcess], private_redis: PrivateRedis, http: aiohttp.ClientSession
) -> None:
    a, b = two_hubs
    room_id = "site-heping"
    token = a.sign("m-heping", "heping", "mediator")
    headers = {"Authorization": f"Bearer {token}"}

    # The room: a publisher (its own WHIP participant) on a, a viewer of it on a,
    # and an event-socket participant on b.
    publisher = await bot.publish(http, a.url, token, room_id, [bot.SyntheticVideo("vp8", 160, 120, 15)])
    viewer = await bot.view(http, a.url, token, publisher.resource_id, kinds=("video",))
    frames = viewer.logs["video"].frames
    socket = await EventSocket.open(http, b, token)
    late_socket = None
    try:
        await socket.ws.send_json({"type": "join", "room": room_id, "name": "乙"})
        await socket.wait_for("joined")
        await wait_until(lambda: len(frames) >= 10, 20)
        operator = {"Authorization": f"Bearer {a.sign('op-heping', 'heping', 'operator')}"}
        assert await _terminals(http, a, "heping", operator) == 1  # the socket on b
        before = await _room(http, b, room_id, headers)
        participants = sorted(p["id"] for p in before["participants"])
        assert len(participants) == 2
        assert [s["id"] for s in before["streams"]] == [publisher.resource_id]

        private_redis.kill()
        outage_start = time.monotonic()
        await socket.wait_for("degraded", timeout=10)
        refused = await _room(http, a, room_id, headers)
        assert refused["status"] == 503 and refused["content_type"] == "application/problem+json"
        assert "redis" in refused["detail"]
        for hub in (a, b):
            assert await _status(http, f"{hub.url}/readyz") == 503
        # A socket's message that needs Redis is refused, not dropped; a socket opened now is told at once.
        await socket.ws.send_json({"type": "chat", "room": room_id, "text": "还在吗"})
        assert (await socket.wait_for("error", timeout=10))["code"] == "unavailable"
        late_socket = await EventSocket.open(http, a, token)
        await late_socket.wait_for("degraded", timeout=10)
        # Every second of the outage: frames still arrive, liveness stays 200.
        last = len(frames)
        while time.monotonic() - outage_start < OUTAGE_SECONDS:
            await asyncio.sleep(1)
            assert len(frames) > last, f"no frame in the second ending {time.monotonic() - outage_start:.1f} s in"
            last = len(frames)
            for hub in (a, b):
                assert await _status(http, f"{hub.url}/healthz") == 200
        assert await _status(http, f"{b.url}/api/rooms/{room_id}", headers) == 503

        private_redis.start()  # the same port, empty
        back = time.monotonic()
        listed: dict[str, dict] = {}

        async def relisted() -> bool:
            for hub in (a, b):
                listed[hub.url] = await _room(http, hub, room_id, headers)
            return all(
                r["status"] == 200
                and sorted(p["id"] for p in r["participants"]) == participants
                and [s["id"] for s in r["streams"]] == [publisher.resource_id]
                for r in listed.values()
            )

        while not await relisted():
            assert time.monotonic() - back < RECOVERY_SECONDS, f"not listed again in time: {listed}"
            await asyncio.sleep(0.25)
        print(f"listed again on both processes {time.monotonic() - back:.2f} s after Redis restarted")
        for hub in (a, b):
            assert await _status(http, f"{hub.url}/readyz") == 200
        # Presence too: both sockets (b's from before, a's opened during the outage) count again.
        while (terminals := await _terminals(http, a, "heping", operator)) != 2:
            assert time.monotonic() - back < RECOVERY_SECONDS, f"{terminals} terminals online"
            await asyncio.sleep(0.25)
        assert len(frames) > last  # and media never stopped
        # The open socket is told, and gets its room's picture again without rejoining.
        await socket.wait_for("restored", timeout=RECOVERY_SECONDS)
        roster = await socket.wait_for("roster", timeout=RECOVERY_SECONDS)
        # b's own participant is written back before b's sockets get the roster (a's records may follow as events).
        mine = socket.of("joined")[0]["participant"]["id"]
        assert roster["room_id"] == room_id and mine in {p["id"] for p in roster["participants"]}

        # A new viewer joins through the other process (redirected to the stream's host).
        late = await bot.view(http, b.url, token, publisher.resource_id, kinds=("video",))
        try:
            await wait_until(lambda: len(late.logs["video"].frames) >= 10, 20)
        finally:
            await late.close()
    finally:
        await socket.close()
        if late_socket is not None:
            await late_socket.close()
        await viewer.pc.close()
        await publisher.pc.close()


async def test_a_process_swept_during_a_partition_re_registers_when_it_is_back(
    two_hubs: tuple[HubProcess, HubProcess], http: aiohttp.ClientSession
) -> None:
    a, b = two_hubs
    room_id = "site-xiazhai"
    token = a.sign("m-xiazhai", "xiazhai", "mediator")
    headers = {"Authorization": f"Bearer {token}"}
    on_a = await EventSocket.open(http, a, token)
    on_b = await EventSocket.open(http, b, token)
    try:
        await on_a.ws.send_json({"type": "join", "room": room_id, "name": "甲"})
        mine = (await on_a.wait_for("joined"))["participant"]["id"]
        await on_b.ws.send_json({"type": "join", "room": room_id, "watch": True})
        await on_b.wait_for("joined")
        # Frozen past its heartbeat's life (3 s), a is cut off as far as the others can tell: b sweeps it.
        a.proc.send_signal(signal.SIGSTOP)
        try:
            left = await on_b.wait_for("participant-left", timeout=15)
            assert left["participant_id"] == mine
            assert (await _room(http, b, room_id, headers))["participants"] == []
        finally:
            a.proc.send_signal(signal.SIGCONT)
        # Back, a finds its heartbeat key gone and writes its participant again; b's watcher is told.
        joined = await on_b.wait_for("participant-joined", timeout=RECOVERY_SECONDS)
        assert joined["participant"]["id"] == mine
        assert [p["id"] for p in (await _room(http, b, room_id, headers))["participants"]] == [mine]
    finally:
        await on_a.close()
        await on_b.close()


async def test_the_room_page_shows_the_outage_and_takes_the_roster_after_it(
    two_hubs: tuple[HubProcess, HubProcess], private_redis: PrivateRedis, http: aiohttp.ClientSession, browser: Browser
) -> None:
    a, b = two_hubs
    room_id = "site-rianxiuma"
    token = a.sign("med-rianxiuma", "rianxiuma", "mediator")
    publisher = await bot.publish(http, a.url, token, room_id, [bot.SyntheticVideo("vp8", 160, 120, 15)])
    context = await browser.new_context(viewport={"width": 1280, "height": 800})
    page = await context.new_page()
    page.on("console", lambda m: m.type in ("error", "warning") and print(f"[browser {m.type}] {m.text}"))
    try:
        await page.goto(f"{b.url}/rooms/{room_id}?token={token}&autojoin=1")
        await expect(page.locator("#room")).to_be_visible(timeout=20_000)
        tile = page.locator(f'.room-tile:not(.self)[data-stream-id="{publisher.resource_id}"]')
        await expect(tile).to_have_count(1, timeout=20_000)

        private_redis.kill()
        banner = page.locator("#banner")
        await expect(banner).to_have_attribute("data-error", "live.degraded", timeout=10_000)
        # Ended while Redis is away: no process can announce it, nothing is there to sweep once Redis is back empty.
        await publisher.close()
        private_redis.start()
        # The page was not reloaded: the roster after `restored` takes the ended stream's tile away.
        await expect(banner).to_be_hidden(timeout=RECOVERY_SECONDS * 1000)
        await expect(tile).to_have_count(0, timeout=RECOVERY_SECONDS * 1000)
        await expect(page.locator(".room-tile.self")).to_be_visible()
    finally:
        await context.close()
        await publisher.pc.close()


async def test_a_relay_outlives_a_redis_restart_until_its_host_is_back(
    tmp_path: Path, private_redis: PrivateRedis, http: aiohttp.ClientSession
):
    """A relay is in no directory, so nothing of it is written back; while a
    fresh Redis lacks the host's stream (until the host writes it back), the
    relaying process's sweeps must not take that for the host's death."""
    env = {"HUB_NODE_TTL": "3", "HUB_CLUSTER_SECRET": secrets.token_urlsafe(32)}
    host = start_hub(tmp_path / "hubs", "--redis", private_redis.url, env=env)
    relay = start_hub(tmp_path / "hubs", "--redis", private_redis.url, env=env)
    try:
        token = host.sign("m-relay-outage", "xiazhai", "mediator")
        headers = {"Authorization": f"Bearer {token}"}
        publisher = await bot.publish(http, host.url, token, "site-xiazhai", [bot.SyntheticVideo("vp8", 160, 120, 15)])
        viewer = await bot.view(http, relay.url, token, publisher.resource_id, kinds=("video",))
        frames = viewer.logs["video"].frames
        await wait_until(lambda: len(frames) > 10, timeout=15)
        async with http.get(f"{relay.url}/healthz") as r:
            assert (await r.json())["relays"] == 1  # pulled through the relaying process, not redirected

        private_redis.kill()
        await asyncio.sleep(5)
        private_redis.start()
        deadline = time.monotonic() + RECOVERY_SECONDS
        while publisher.resource_id not in {
            s["id"] for s in (await _room(http, relay, "site-xiazhai", headers)).get("streams", [])
        }:
            assert time.monotonic() < deadline, "the host did not write its stream back"
            await asyncio.sleep(0.2)

        # The moment a sweep may fall in after a restart: the host's heartbeat is
        # back, its stream not yet (made to last here by removing the stream
        # again). Three sweep periods of the relaying process later, the relay still carries frames.
        shared = aioredis.from_url(private_redis.url)
        try:
            assert await shared.hdel("hub:streams", publisher.resource_id) == 1
        finally:
            await shared.aclose()
        seen = len(frames)
        await asyncio.sleep(3 * 3)
        assert viewer.pc.connectionState == "connected"
        assert len(frames) > seen + 60, (seen, len(frames))
        async with http.get(f"{relay.url}/healthz") as r:
            assert (await r.json())["relays"] == 1
        await viewer.pc.close()
        await publisher.pc.close()
    finally:
        host.stop()
        relay.stop()
