"""The hub's event loop forwards every packet: durable writes must not stall it.

A real hub forwards a stream from an aiortc publisher to an aiortc viewer
while 200 case writes (100 cases opened and each then changed, all at once)
go through HTTP; the hub's own lag probe (GET /healthz) tells how late its
loop ran, and the viewer's frames tell whether forwarding kept up.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from client import bot

from .conftest import HubProcess, start_hub, wait_until

CASES = 100  # each opened (POST) and then changed (PATCH): 200 writes
MAX_LAG_MS = 50.0
FRAMES = 150  # 5 s of video at 30 fps
VILLAGE = "qutancun"
NEW_CASE = {
    "title": "土地承包纠纷",
    "dispute_type": "land",
    "parties": [{"name": "王五", "role": "applicant"}, {"name": "赵六", "role": "respondent"}],
}


@pytest.fixture(params=["sqlite", "postgresql"])
def lag_hub(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[HubProcess]:
    """A hub of its own: the lag probe's maximum counts from the hub's start. On
    SQLite (its thread) and on PostgreSQL (psycopg waits on the loop itself)."""
    database = () if request.param == "sqlite" else ("--database", request.getfixturevalue("postgres_url"))
    process = start_hub(tmp_path / "hub", *database)
    yield process
    process.stop()


async def loop_lag(http: aiohttp.ClientSession, hub: HubProcess) -> tuple[float, float]:
    """The hub's worst lag since start: its own, and as the clock saw it (with the machine's load)."""
    async with http.get(f"{hub.url}/healthz") as response:
        assert response.status == 200
        health = await response.json()
        return float(health["loop_lag_max_ms"]), float(health["loop_lag_wall_max_ms"])


async def open_and_change(http: aiohttp.ClientSession, hub: HubProcess, token: str, n: int) -> None:
    headers = {"Authorization": f"Bearer {token}"}
    async with http.post(f"{hub.url}/api/cases", json=NEW_CASE | {"summary": f"第{n}户"}, headers=headers) as r:
        case: dict[str, Any] = await r.json()
        assert r.status == 201, case
    async with http.patch(f"{hub.url}/api/cases/{case['id']}", json={"status": "mediating"}, headers=headers) as r:
        assert r.status == 200, await r.text()


async def test_case_writes_do_not_stall_forwarding(lag_hub: HubProcess, http: aiohttp.ClientSession) -> None:
    hub = lag_hub
    mediator = hub.sign("m-qutancun", VILLAGE, "mediator")
    video = bot.SyntheticVideo("vp8", 320, 240, 30)
    publisher = await asyncio.wait_for(bot.publish(http, hub.url, mediator, f"site-{VILLAGE}", [video]), 20)
    viewer = await asyncio.wait_for(bot.view(http, hub.url, mediator, publisher.resource_id, ("video",)), 20)
    log = viewer.logs["video"]
    try:
        await wait_until(lambda: log.first_keyframe_at is not None, timeout=15)
        before = await loop_lag(http, hub)
        await asyncio.wait_for(asyncio.gather(*(open_and_change(http, hub, mediator, n) for n in range(CASES))), 120)
        await wait_until(lambda: len(video.sent) >= FRAMES, timeout=30)  # forwarding went on after the writes
        video.stop()
        await asyncio.sleep(0.5)  # the last frames in flight
        lag, wall = await loop_lag(http, hub)
    finally:
        await viewer.close()
        await publisher.close()

    headers = {"Authorization": f"Bearer {mediator}"}
    async with http.get(f"{hub.url}/api/cases", params={"status": "mediating"}, headers=headers) as r:
        assert r.status == 200
        assert len(await r.json()) == CASES  # every write landed
    print(f"loop lag max {lag} ms (wall clock {wall} ms); before the writes {before}")
    assert lag <= MAX_LAG_MS, f"the hub's event loop stalled {lag} ms (before the writes: {before[0]} ms)"
    first_key = next(f for f in log.frames if f.keyframe)
    delivery = bot.compare(video, log, since=video.sent[first_key.key].sent_at)
    assert delivery.sent >= FRAMES // 2
    assert delivery.ratio >= 0.99, delivery
