"""The console of a big tree (GET /api/console/branch): on the seed-sized
tree (4,954 sites) the province's first load lists its 8 prefectures with
their counts, not every site; opening a branch returns its children; the
presence events a console receives carry what it needs to change those
counts by delta (the site's path and its count before), and the counts so
changed equal a fresh load."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
from playwright.async_api import Browser, expect

from .conftest import EventSocket, HubProcess, start_hub, wait_until
from .test_routing import storm_tree

#: The first load's bound: 9 sites with their counts, far from the 4,954 sites' 2 MB.
FIRST_LOAD_BYTES = 8_000


@pytest.fixture(scope="module")
def big_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubProcess]:
    data = tmp_path_factory.mktemp("big-tree")
    sites = [{"id": s.id, "name": s.name, "level": s.level, "parent": s.parent} for s in storm_tree()]
    (data / "sites.json").write_text(json.dumps(sites))
    process = start_hub(data / "hub", env={"HUB_SITES": str(data / "sites.json"), "HUB_SNAPSHOT_SECONDS": "0"})
    yield process
    process.stop()


async def load(http: aiohttp.ClientSession, hub: HubProcess, token: str, site: str = "") -> tuple[int, dict[str, Any]]:
    params = {"site": site} if site else {}
    async with http.get(
        f"{hub.url}/api/console/branch", params=params, headers={"Authorization": f"Bearer {token}"}
    ) as response:
        body = await response.read()
        assert response.status == 200, body
    return len(body), json.loads(body)


def counts(branch: dict[str, Any]) -> dict[str, dict[str, int]]:
    return {entry["id"]: entry["counts"] for entry in [branch["site"], *branch["children"]]}


def apply_presence(loaded: dict[str, dict[str, int]], event: dict[str, Any]) -> None:
    """What web/js/livestatus.js (BranchStatus) does with a presence event for a site it holds no row of."""
    change = event["online"] - event["was"]
    went = int(event["online"] > 0) - int(event["was"] > 0)
    for site_id in event["path"]:
        if site_id in loaded:
            loaded[site_id]["terminals"] += change
            loaded[site_id]["sites_online"] += went
            loaded[site_id]["villages_online"] += went if event["level"] == "village" else 0


async def test_a_big_trees_console_loads_counts_opens_branches_and_follows_deltas(
    big_hub: HubProcess, http: aiohttp.ClientSession
) -> None:
    tree = storm_tree()
    operator = big_hub.sign("op-prov", "prov", "operator")
    early = [await EventSocket.open(http, big_hub, big_hub.sign(f"t{v}", v, "terminal")) for v in ("v0", "v4485")]

    size, first = await load(http, big_hub, operator)
    assert size < FIRST_LOAD_BYTES, size
    assert first["site"]["id"] == "prov" and first["site"]["children"] == 8
    assert [c["id"] for c in first["children"]] == [f"p{i}" for i in range(8)]
    assert sum(c["counts"]["villages"] for c in first["children"]) == 4486
    assert first["site"]["counts"]["sites"] == 4954 and first["site"]["counts"]["villages_online"] == 2
    assert first["children"][0]["counts"]["terminals"] == 1 and first["children"][7]["counts"]["terminals"] == 1

    # Opening a prefecture: its counties, each with its count of townships.
    _, opened = await load(http, big_hub, operator, "p3")
    expected = [s.id for s in tree if s.parent == "p3"]
    assert [c["id"] for c in opened["children"]] == expected
    assert opened["site"]["counts"] == first["children"][3]["counts"]
    assert all(c["children"] == len([s for s in tree if s.parent == c["id"]]) for c in opened["children"])

    # Deltas: the console follows presence in an unopened village of p3 by counts alone.
    console = await EventSocket.open(http, big_hub, operator)
    await console.ws.send_json({"type": "monitor", "on": True})
    ack = await console.wait_for("ack")
    _, base = await load(http, big_hub, operator)
    _, county_branch = await load(http, big_hub, operator, expected[0])
    loaded = counts(base) | counts(county_branch)
    village = next(s.id for s in tree.jurisdiction(expected[0]) if s.level == "village")
    sockets = [await EventSocket.open(http, big_hub, big_hub.sign(f"x{i}", village, "terminal")) for i in range(2)]
    await sockets[0].close()
    await wait_until(lambda: len([e for e in console.of("presence") if e["site_id"] == village]) == 3, 15)
    for event in (e for e in console.of("presence") if e["site_id"] == village):
        assert event["seq"] > max(ack["seq"], base["seq"], county_branch["seq"])
        assert event["path"][0] == village and event["path"][-1] == "prov", event
        apply_presence(loaded, event)
    _, now = await load(http, big_hub, operator)
    _, county_now = await load(http, big_hub, operator, expected[0])
    assert loaded == counts(now) | counts(county_now)
    # Two early villages, the one followed, and the console's own connection at the province.
    assert now["site"]["counts"]["villages_online"] == 3 and now["site"]["counts"]["terminals"] == 4

    for sock in [*early, sockets[1], console]:
        await sock.close()


async def test_a_branch_outside_the_jurisdiction_is_forbidden(big_hub: HubProcess, http: aiohttp.ClientSession) -> None:
    operator = big_hub.sign("op-p1", "p1", "operator")
    headers = {"Authorization": f"Bearer {operator}"}
    async with http.get(f"{big_hub.url}/api/console/branch", params={"site": "p2"}, headers=headers) as response:
        assert response.status == 403
        assert response.content_type == "application/problem+json"
    async with http.get(f"{big_hub.url}/api/console/branch", params={"site": "nowhere"}, headers=headers) as response:
        assert response.status == 404


async def test_the_console_page_opens_a_big_tree_branch_by_branch(
    big_hub: HubProcess, browser: Browser, http: aiohttp.ClientSession
) -> None:
    """In Chromium: the province console of the seed-sized tree loads neither
    the site list nor the status, only branches; opening a prefecture loads
    its children; a village going online and offline deep in an unopened
    branch changes the counts of its prefecture by deltas, with no request."""
    page = await browser.new_page(viewport={"width": 1440, "height": 900})
    page.on("pageerror", lambda e: print(f"[browser pageerror] {e}"))
    requests: list[str] = []
    page.on(
        "request",
        lambda r: "/api/" in r.url and requests.append(r.url.split("?")[0] + "?" + r.url.partition("site=")[2]),
    )
    await page.goto(f"{big_hub.url}/console?token={big_hub.sign('op-prov2', 'prov', 'operator')}")
    await expect(page.locator("#conn")).to_have_attribute("data-state", "open")
    await expect(page.locator('[data-select="p7"]')).to_be_visible()
    assert not any(r.startswith((f"{big_hub.url}/api/sites", f"{big_hub.url}/api/console/status")) for r in requests)
    assert await page.locator("[data-select]").count() == 9  # the province and its 8 prefectures

    await page.locator('[data-toggle="p3"]').click()
    counties = [s.id for s in storm_tree() if s.parent == "p3"]
    await expect(page.locator(f'[data-select="{counties[-1]}"]')).to_be_visible()
    assert f"{big_hub.url}/api/console/branch?p3" in requests

    village = next(s.id for s in storm_tree().jurisdiction("p5") if s.level == "village")
    prefecture = page.locator('[data-rollup="p5"]')
    await expect(prefecture).to_contain_text(" 0/")
    before = len(requests)
    async with http.ws_connect(f"{big_hub.url}/ws?token={big_hub.sign('t-deep', village, 'terminal')}"):
        await expect(prefecture).to_contain_text(" 1/")
    await expect(prefecture).to_contain_text(" 0/")
    assert len(requests) == before, requests[before:]  # deltas only
    await page.close()
