"""GET /metrics: a real hub forwarding a real stream to a real aiortc viewer,
scraped and parsed with prometheus_client's own text parser."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from client import bot
from signaling.metrics import is_direct_loopback

from .conftest import EventSocket, HubProcess, start_hub, wait_until

METRICS_TOKEN = "scraper-secret-for-tests"
ROOM = "site-rianxiuma"


@pytest.fixture(scope="module")
def metrics_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubProcess]:
    process = start_hub(tmp_path_factory.mktemp("metrics"), env={"HUB_METRICS_TOKEN": METRICS_TOKEN})
    yield process
    process.stop()


async def scrape(http: aiohttp.ClientSession, hub: HubProcess, token: str | None = METRICS_TOKEN) -> dict[str, float]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with http.get(f"{hub.url}/metrics", headers=headers) as r:
        assert r.status == 200, await r.text()
        assert r.content_type == "text/plain"
        text = await r.text()
    return {s.name: s.value for family in text_string_to_metric_families(text) for s in family.samples if not s.labels}


async def until(http: aiohttp.ClientSession, hub: HubProcess, name: str, value: float) -> dict[str, float]:
    """Scrape until `name` reads `value` (the hub notices a closed peer or socket on its own time)."""
    for _ in range(100):
        figures = await scrape(http, hub)
        if figures[name] == value:
            return figures
        await asyncio.sleep(0.1)
    raise AssertionError(f"{name} stayed at {figures[name]}, expected {value}")


async def test_forwarding_figures_while_a_stream_flows(metrics_hub: HubProcess, http: aiohttp.ClientSession):
    hub = metrics_hub
    before = await scrape(http, hub)
    assert before["hub_streams"] == 0 and before["hub_subscriptions"] == 0

    video = bot.SyntheticVideo("vp8", 320, 240, 30)
    publisher = await bot.publish(http, hub.url, hub.sign("mediator-m", "rianxiuma", "mediator"), ROOM, [video])
    operator = hub.sign("op-metrics", "guinan", "operator")
    viewer = await bot.view(http, hub.url, operator, publisher.resource_id, kinds=("video",))
    try:
        frames = viewer.logs["video"].frames
        await wait_until(lambda: len(frames) > 10, timeout=15)
        first = await scrape(http, hub)
        assert first["hub_streams"] == 1 and first["hub_subscriptions"] == 1
        seen = len(frames)
        await wait_until(lambda: len(frames) > seen + 15, timeout=15)
        second = await scrape(http, hub)
        assert second["hub_packets_forwarded_total"] > first["hub_packets_forwarded_total"] > 0
        assert second["hub_bytes_forwarded_total"] > first["hub_bytes_forwarded_total"]
        assert second["hub_packets_received_total"] >= second["hub_packets_forwarded_total"]
        # A joining viewer asks for a keyframe; the hub passes one request on to the publisher.
        assert second["hub_keyframe_requests_total"] >= 1
        for counter in ("hub_packets_dropped_total", "hub_retransmissions_total", "hub_datagrams_refused_total"):
            assert counter in second

        await viewer.close()
        after = await until(http, hub, "hub_subscriptions", 0)
        assert after["hub_streams"] == 1  # the stream goes on without viewers
    finally:
        await viewer.pc.close()
        await publisher.close()
    await until(http, hub, "hub_streams", 0)


async def test_sockets_recordings_lag_and_process(metrics_hub: HubProcess, http: aiohttp.ClientSession):
    hub = metrics_hub
    operator = hub.sign("op-metrics", "guinan", "operator")
    auth = {"Authorization": f"Bearer {operator}"}
    socket = await EventSocket.open(http, hub, operator)
    try:
        assert (await scrape(http, hub))["hub_event_sockets"] == 1
    finally:
        await socket.close()
    await until(http, hub, "hub_event_sockets", 0)

    async with http.post(f"{hub.url}/api/rooms/{ROOM}/recording", json={"on": True}, headers=auth) as r:
        assert r.status == 200, await r.text()
    assert (await scrape(http, hub))["hub_recordings"] == 1
    async with http.post(f"{hub.url}/api/rooms/{ROOM}/recording", json={"on": False}, headers=auth) as r:
        assert r.status == 200, await r.text()
    figures = await scrape(http, hub)
    assert figures["hub_recordings"] == 0

    assert figures["hub_event_loop_lag_max_seconds"] >= figures["hub_event_loop_lag_seconds"] >= 0
    assert figures["hub_event_loop_lag_wall_max_seconds"] >= figures["hub_event_loop_lag_max_seconds"]
    assert figures["process_cpu_seconds_total"] > 0 and figures["process_resident_memory_bytes"] > 0
    assert figures["process_open_fds"] > 0


async def test_a_scraper_without_the_token_is_refused(metrics_hub: HubProcess, http: aiohttp.ClientSession):
    url = f"{metrics_hub.url}/metrics"
    user_token = metrics_hub.sign("op-metrics", "guinan", "operator")
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Bearer {user_token}"}):
        async with http.get(url, headers=headers) as r:
            assert r.status == 401, headers
            assert r.content_type == "application/problem+json"
            assert r.headers["WWW-Authenticate"].startswith("Bearer")
            assert b"hub_packets" not in await r.read()


async def test_without_a_token_only_direct_loopback_may_scrape(hub: HubProcess, http: aiohttp.ClientSession):
    assert "hub_streams" in await scrape(http, hub, token=None)
    # What a reverse proxy on the same machine passes on comes from 127.0.0.1 too.
    for header in ("X-Forwarded-For", "Forwarded", "X-Real-IP"):
        async with http.get(f"{hub.url}/metrics", headers={header: "203.0.113.9"}) as r:
            assert r.status == 403, header
            assert r.content_type == "application/problem+json"
    # Tests may not send from another address; the rule itself:
    assert is_direct_loopback("127.0.0.5", []) and is_direct_loopback("::1", [])
    assert is_direct_loopback("::ffff:127.0.0.1", []) and not is_direct_loopback("::ffff:10.0.0.7", [])
    assert not is_direct_loopback("10.0.0.7", []) and not is_direct_loopback("192.0.2.1", [])
    assert not is_direct_loopback(None, []) and not is_direct_loopback("", [])
