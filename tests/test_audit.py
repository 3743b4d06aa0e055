"""The audit log of live feeds: every WHEP view (a real aiortc viewer) and
every snapshot fetched is a row, readable within the reader's jurisdiction."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from client import bot
from hub.core.store import Database
from recorder.catalogue import Catalogue

from .conftest import HubProcess, start_hub, wait_until

ROOM = "site-rianxiuma"  # a village of guinan county; golmud is another county


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def audit_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubProcess]:
    process = start_hub(tmp_path_factory.mktemp("audit"), env={"HUB_SNAPSHOT_SECONDS": "1"})
    yield process
    process.stop()


async def audit_rows(http: aiohttp.ClientSession, hub: HubProcess, token: str, **query: str) -> list[dict[str, Any]]:
    async with http.get(f"{hub.url}/api/audit", params=query, headers=auth(token)) as r:
        assert r.status == 200, await r.text()
        return list(await r.json())


async def publish(http: aiohttp.ClientSession, hub: HubProcess) -> bot.Session:
    token = hub.sign("mediator-a", "rianxiuma", "mediator")
    return await bot.publish(http, hub.url, token, ROOM, [bot.SyntheticVideo("vp8", 320, 240, 30)])


async def watch(http: aiohttp.ClientSession, hub: HubProcess, token: str, stream_id: str) -> bot.Session:
    viewer = await bot.view(http, hub.url, token, stream_id, kinds=("video",))
    await wait_until(lambda: len(viewer.logs["video"].frames) > 5, timeout=15)
    return viewer


async def test_a_whep_view_is_a_row_from_start_to_end(audit_hub: HubProcess, http: aiohttp.ClientSession):
    hub = audit_hub
    operator = hub.sign("op-guinan", "guinan", "operator")
    publisher = await publish(http, hub)
    stream_id = publisher.resource_id
    try:
        posted = time.time()
        viewer = await watch(http, hub, operator, stream_id)
        # Written at the start: a hub killed now still holds the fact of the view.
        [row] = await audit_rows(http, hub, operator, stream=stream_id)
        assert row["action"] == "view" and row["ended_at"] is None and row["duration"] is None
        await asyncio.sleep(1)
        held_until = time.time()
        await viewer.close()
        deleted = time.time()
    finally:
        await publisher.close()

    [row] = await audit_rows(http, hub, operator, stream=stream_id)
    assert (row["user"], row["role"], row["user_site"]) == ("op-guinan", "operator", "guinan")
    assert (row["stream_id"], row["room_id"], row["site_id"]) == (stream_id, ROOM, "rianxiuma")
    assert row["detail"] == viewer.resource_id and row["recording_id"] == ""
    # The row covers the time the viewer watched, within what this test's clock saw.
    assert posted <= row["at"] and row["ended_at"] <= deleted
    assert held_until - row["at"] <= row["duration"] <= deleted - posted


async def test_the_stream_ending_ends_its_views(audit_hub: HubProcess, http: aiohttp.ClientSession):
    hub = audit_hub
    operator = hub.sign("op-guinan", "guinan", "operator")
    publisher = await publish(http, hub)
    viewer = await watch(http, hub, hub.sign("mediator-b", "rianxiuma", "mediator"), publisher.resource_id)
    await publisher.close()
    await wait_until(lambda: viewer.pc.connectionState == "closed", timeout=10)
    await viewer.pc.close()
    [row] = await audit_rows(http, hub, operator, stream=publisher.resource_id)
    assert row["user"] == "mediator-b" and row["ended_at"] is not None and row["duration"] > 0


async def test_a_viewer_gone_without_delete_ends_its_row(audit_hub: HubProcess, http: aiohttp.ClientSession):
    hub = audit_hub
    operator = hub.sign("op-guinan", "guinan", "operator")
    publisher = await publish(http, hub)
    try:
        viewer = await watch(http, hub, operator, publisher.resource_id)
        await viewer.pc.close()  # no DELETE: the hub sees its peer connection close
        for _ in range(100):
            [row] = await audit_rows(http, hub, operator, stream=publisher.resource_id)
            if row["ended_at"] is not None:
                break
            await asyncio.sleep(0.1)
        assert row["ended_at"] is not None and row["duration"] > 0
    finally:
        await publisher.close()


async def fetch_snapshot(
    http: aiohttp.ClientSession, hub: HubProcess, token: str, stream_id: str, etag: str | None = None
) -> str | None:
    """Fetch a stream's snapshot once it has one (within the 1 s period); its ETag,
    or None for a 304: the caller sent the `etag` of the latest one."""
    url = f"{hub.url}/api/streams/{stream_id}/snapshot"
    headers = auth(token) | ({"If-None-Match": etag} if etag else {})
    for _ in range(100):
        async with http.get(url, headers=headers) as r:
            await r.read()
            if r.status == 304:
                return None
            if r.status == 200:
                assert r.content_type == "image/jpeg"
                return r.headers["ETag"]
            assert r.status == 404  # no snapshot yet
        await asyncio.sleep(0.2)
    raise TimeoutError("no snapshot")


async def test_snapshot_fetches_are_rows(audit_hub: HubProcess, http: aiohttp.ClientSession):
    hub = audit_hub
    operator = hub.sign("op-guinan-2", "guinan", "operator")
    publisher = await publish(http, hub)
    stream_id = publisher.resource_id
    try:
        etag = await fetch_snapshot(http, hub, operator, stream_id)
        assert etag is not None
        [row] = await audit_rows(http, hub, operator, stream=stream_id)
        assert (row["user"], row["role"], row["user_site"]) == ("op-guinan-2", "operator", "guinan")
        assert (row["stream_id"], row["room_id"], row["site_id"]) == (stream_id, ROOM, "rianxiuma")
        assert row["action"] == "snapshot" and row["detail"] == "1 snapshot" and row["ended_at"] == row["at"]
        # A console's fetches of one feed extend one row (its count: see the stopped hub's test).
        await fetch_snapshot(http, hub, operator, stream_id)
        assert len(await audit_rows(http, hub, operator, stream=stream_id)) == 1
        # Another user's fetch is a row of its own.
        await fetch_snapshot(http, hub, hub.sign("op-qinghai", "qinghai", "operator"), stream_id)
        rows = await audit_rows(http, hub, operator, stream=stream_id)
        assert [r["user"] for r in rows] == ["op-qinghai", "op-guinan-2"]
    finally:
        await publisher.close()


async def test_only_the_jurisdiction_reads_the_rows(audit_hub: HubProcess, http: aiohttp.ClientSession):
    hub = audit_hub
    publisher = await publish(http, hub)
    stream_id = publisher.resource_id
    try:
        viewer = await watch(http, hub, hub.sign("op-guinan", "guinan", "operator"), stream_id)
        await viewer.close()
    finally:
        await publisher.close()
    assert await audit_rows(http, hub, hub.sign("op-guinan", "guinan", "operator"), stream=stream_id)
    province = hub.sign("op-qinghai", "qinghai", "operator")
    assert [r["stream_id"] for r in await audit_rows(http, hub, province, site="guinan")].count(stream_id) == 1

    # Another county's operator sees none of guinan's rows, and may not ask for them.
    golmud = hub.sign("op-golmud", "golmud", "operator")
    assert all(r["site_id"] != "rianxiuma" for r in await audit_rows(http, hub, golmud))
    assert await audit_rows(http, hub, golmud, stream=stream_id) == []
    async with http.get(f"{hub.url}/api/audit", params={"site": "guinan"}, headers=auth(golmud)) as r:
        assert r.status == 403 and r.content_type == "application/problem+json"

    refused = [
        hub.sign("party-1", "rianxiuma", "guest", room=ROOM),  # a guest
        hub.sign("mediator-a", "rianxiuma", "mediator"),  # not an auditor's role
        hub.sign("op-room", "guinan", "operator", room=ROOM),  # an operator's token bound to one room
    ]
    for token in refused:
        async with http.get(f"{hub.url}/api/audit", headers=auth(token)) as r:
            assert r.status == 403 and r.content_type == "application/problem+json"
            assert stream_id not in await r.text()


async def test_a_killed_hub_keeps_the_view_and_a_stopped_one_ends_it(tmp_path: Path, http: aiohttp.ClientSession):
    data = tmp_path / "hub"
    db = data / "hub.sqlite3"
    operator = "op-guinan", "guinan", "operator"

    hub = start_hub(data)
    try:
        publisher = await publish(http, hub)
        viewer = await watch(http, hub, hub.sign(*operator), publisher.resource_id)
    finally:
        hub.proc.kill()  # SIGKILL: no shutdown, no end written
        hub.proc.wait(10)
    await viewer.pc.close()
    await publisher.pc.close()
    [killed] = await read_rows(db, publisher.resource_id)
    assert killed["user"] == "op-guinan" and killed["ended_at"] is None

    hub = start_hub(data, env={"HUB_SNAPSHOT_SECONDS": "1"})
    try:
        publisher = await publish(http, hub)
        viewer = await watch(http, hub, hub.sign(*operator), publisher.resource_id)
        # Pictures fetched count; a 304 (the caller holds the latest picture) does not. A new
        # snapshot every second may turn the conditional request into a fetch: count those too.
        token, fetched, unchanged = hub.sign(*operator), 0, 0
        while not (unchanged and fetched >= 3):
            etag = await fetch_snapshot(http, hub, token, publisher.resource_id)
            fetched += 1
            if await fetch_snapshot(http, hub, token, publisher.resource_id, etag) is None:
                unchanged += 1
            else:
                fetched += 1
            assert fetched < 40
    finally:
        hub.stop()  # SIGTERM: the hub ends its viewers and brings its rows up to date before it closes the log
    await viewer.pc.close()
    await publisher.pc.close()
    snapshots, view = await read_rows(db, publisher.resource_id)
    assert view["action"] == "view" and view["ended_at"] is not None and view["duration"] > 0
    assert snapshots["action"] == "snapshot" and snapshots["detail"] == f"{fetched} snapshots"
    assert snapshots["ended_at"] > snapshots["at"]


async def read_rows(path: Path, stream_id: str) -> list[dict[str, Any]]:
    db = Database(path)
    try:
        catalogue = Catalogue(db)
        await catalogue.open()
        return await catalogue.audit_rows(["rianxiuma"], stream_id=stream_id)
    finally:
        await db.close()


async def test_an_audit_log_from_before_live_views_upgrades(tmp_path: Path):
    path = tmp_path / "hub.sqlite3"
    with sqlite3.connect(path) as old:
        old.execute(
            "CREATE TABLE audit (id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, user TEXT NOT NULL,"
            " role TEXT NOT NULL, action TEXT NOT NULL, recording_id TEXT NOT NULL, site_id TEXT NOT NULL,"
            " detail TEXT NOT NULL DEFAULT '')"
        )
        old.execute(
            "INSERT INTO audit (at, user, role, action, recording_id, site_id)"
            " VALUES (1, 'u', 'operator', 'playback', 'rec-1', 'guinan')"
        )
    old.close()
    db = Database(path)
    try:
        catalogue = Catalogue(db)
        await catalogue.open()
        [row] = await catalogue.audit_rows(["guinan"])
        assert row["recording_id"] == "rec-1" and row["stream_id"] == "" and row["ended_at"] is None
        row_id = await catalogue.audit_live("u", "operator", "guinan", "view", "s-1", "site-guinan", "guinan")
        await catalogue.audit_until(row_id, 2.5)
        rows = await catalogue.audit_rows(["guinan"])
        assert [(r["stream_id"], r["ended_at"]) for r in rows] == [("s-1", 2.5), ("", None)]
    finally:
        await db.close()
