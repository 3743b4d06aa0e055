"""Two hub processes sharing live state through a real redis-server."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from client import bot

from .conftest import HubProcess, start_hub


@pytest.fixture
def two_hubs(tmp_path: Path, redis_url: str) -> Iterator[tuple[HubProcess, HubProcess]]:
    # One data directory: both processes sign and verify with the same secret.
    # A short heartbeat so that a killed process is swept within seconds.
    first = start_hub(tmp_path, "--redis", redis_url, env={"HUB_NODE_TTL": "2"})
    second = start_hub(tmp_path, "--redis", redis_url, env={"HUB_NODE_TTL": "2"})
    yield first, second
    first.stop()
    second.stop()


async def test_two_hubs_share_rooms_participants_and_streams(two_hubs, http: aiohttp.ClientSession):
    a, b = two_hubs
    token = a.token("m-heping", "heping", "mediator")
    headers = {"Authorization": f"Bearer {token}"}
    async with (
        http.ws_connect(f"{a.url}/ws?token={token}") as on_a,
        http.ws_connect(f"{b.url}/ws?token={token}") as on_b,
    ):
        for ws in (on_a, on_b):
            assert (await ws.receive_json(timeout=5))["type"] == "hello"
        await on_a.send_json({"type": "join", "room": "site-heping", "name": "甲"})
        assert (await on_a.receive_json(timeout=5))["type"] == "joined"
        await on_b.send_json({"type": "join", "room": "site-heping", "name": "乙"})
        joined_b = await on_b.receive_json(timeout=5)
        assert sorted(p["name"] for p in joined_b["participants"]) == ["乙", "甲"]
        # The join on b reaches a's socket through Redis pub/sub.
        while (event := await on_a.receive_json(timeout=5))["participant"]["name"] != "乙":
            pass
        assert event["type"] == "participant-joined"

        for hub in (a, b):
            async with http.get(f"{hub.url}/api/rooms/site-heping", headers=headers) as r:
                assert sorted(p["name"] for p in (await r.json())["participants"]) == ["乙", "甲"]

        # A stream published on a is in b's directory, and a viewer asking b
        # is redirected to a (WHEP allows redirects) and receives it.
        video = bot.SyntheticVideo("vp8", 160, 120, 15)
        publisher = await bot.publish(http, a.url, token, "site-heping", [video])
        try:
            async with http.get(f"{b.url}/api/streams/{publisher.resource_id}", headers=headers) as r:
                stream = await r.json()
            assert stream["node_url"] == a.url
            async with http.post(
                f"{b.url}/whep/{publisher.resource_id}",
                data="v=0",
                allow_redirects=False,
                headers=headers | {"Content-Type": "application/sdp"},
            ) as r:
                assert r.status == 307
                assert r.headers["Location"] == f"{a.url}/whep/{publisher.resource_id}"
            viewer = await bot.view(http, b.url, token, publisher.resource_id, kinds=("video",))
            assert viewer.location.startswith(a.url)
            import asyncio

            for _ in range(50):
                if len(viewer.logs["video"].frames) >= 10:
                    break
                await asyncio.sleep(0.1)
            assert len(viewer.logs["video"].frames) >= 10
            await viewer.close()
        finally:
            await publisher.close()
        async with http.get(f"{b.url}/api/rooms/site-heping", headers=headers) as r:
            assert (await r.json())["streams"] == []


async def test_a_killed_hub_process_is_swept_from_shared_state(two_hubs, http: aiohttp.ClientSession):
    a, b = two_hubs
    token = a.token("m-xiazhai", "xiazhai", "mediator")
    headers = {"Authorization": f"Bearer {token}"}
    publisher = await bot.publish(http, a.url, token, "site-xiazhai", [bot.SyntheticVideo("vp8", 160, 120, 15)])
    async with http.ws_connect(f"{b.url}/ws?token={token}") as on_b:
        assert (await on_b.receive_json(timeout=5))["type"] == "hello"
        await on_b.send_json({"type": "join", "room": "site-xiazhai"})
        joined = await on_b.receive_json(timeout=5)
        assert [s["id"] for s in joined["streams"]] == [publisher.resource_id]
        a.proc.kill()  # SIGKILL: no goodbye
        a.proc.wait(5)
        seen = set()
        while not {"stream-removed", "participant-left"} <= seen:
            event = await on_b.receive_json(timeout=10)
            seen.add(event["type"])
    async with http.get(f"{b.url}/api/rooms/site-xiazhai", headers=headers) as r:
        room = await r.json()
    assert room["streams"] == [] and [p for p in room["participants"] if p["via"] == "whip"] == []
    await publisher.pc.close()


async def test_a_change_racing_a_leave_does_not_bring_the_participant_back(redis_url: str):
    from hub.core.livestate import MemoryLiveState, RedisLiveState

    for state in (MemoryLiveState("n1"), RedisLiveState(redis_url, "n1", 5)):
        await state.start()
        try:
            await state.add_participant("room-race", {"id": "p1", "name": "a"})
            assert await state.replace_participant("room-race", {"id": "p1", "name": "b"})
            assert [p["name"] for p in await state.participants("room-race")] == ["b"]
            assert await state.remove_participant("room-race", "p1")
            assert not await state.replace_participant("room-race", {"id": "p1", "name": "c"})
            assert await state.participants("room-race") == []
        finally:
            await state.close()


async def test_named_records_claim_once_and_expire_on_both_backends(redis_url: str):
    from hub.core.livestate import MemoryLiveState, RedisLiveState

    kind = f"test-{secrets.token_hex(4)}"  # the Redis server is shared with other tests
    for state in (MemoryLiveState("n1"), RedisLiveState(redis_url, "n1", 5)):
        await state.start()
        try:
            claims = await asyncio.gather(*(state.claim_record(kind, "c1", {"by": f"op{i}"}) for i in range(5)))
            assert sorted(claims) == [False] * 4 + [True]
            winner = (await state.get_record(kind, "c1"))["by"]
            assert claims[int(winner.removeprefix("op"))]
            await state.put_record(kind, "c2", {"by": "x"}, ttl=0.2)
            assert set(await state.records(kind)) == {"c1", "c2"}
            await asyncio.sleep(0.4)
            assert await state.records(kind) == {"c1": {"by": winner}}
            assert await state.delete_record(kind, "c1") == {"by": winner}
            assert await state.delete_record(kind, "c1") is None
            assert await state.records(kind) == {}
        finally:
            await state.close()
