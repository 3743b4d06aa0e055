"""The console in headless Chromium against a real hub process: the live
tree follows Python clients joining and publishing without a reload, the
wall plays what is put on it, patrol switches on time, and an operator of
another county neither sees nor walls what is not theirs."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator

import aiohttp
import pytest
from playwright.async_api import Browser, Page, expect

from client import bot
from tests.browser import assert_playing, screen_text, video_stats

from .conftest import HubProcess, start_hub

CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")

expect.set_options(timeout=20_000)


@pytest.fixture(scope="module")
def console_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubProcess]:
    process = start_hub(tmp_path_factory.mktemp("console-browser-hub"))
    yield process
    process.stop()


async def open_console(browser: Browser, hub: HubProcess, token: str) -> Page:
    page = await browser.new_page(viewport={"width": 1440, "height": 900})
    page.on("console", lambda m: print(f"[browser {m.type}] {m.text}"))
    page.on("pageerror", lambda e: print(f"[browser pageerror] {e}"))
    await page.goto(f"{hub.url}/console?token={token}")
    await expect(page.locator("#conn")).to_have_attribute("data-state", "open")
    return page


async def publish(http: aiohttp.ClientSession, hub: HubProcess, token: str, room: str) -> bot.Session:
    video = bot.SyntheticVideo("vp8", 320, 240, 15)
    return await asyncio.wait_for(bot.publish(http, hub.url, token, room, [video]), 20)


async def test_tree_follows_clients_live_and_the_wall_plays(
    console_hub: HubProcess, browser: Browser, http: aiohttp.ClientSession
) -> None:
    page = await open_console(browser, console_hub, console_hub.sign("op-ledu", "ledu", "operator"))
    village = page.locator('[data-select="xinzhuang"]')
    await expect(village).to_have_attribute("data-online", "false")
    await expect(page.locator('[data-rollup="ledu"]')).to_contain_text("0/4")
    # Search by pinyin id or English name narrows the tree to the match and its ancestors.
    await page.fill("#search", "Xinzhuang")
    await expect(page.locator("#tree [data-select]")).to_have_count(3)  # ledu, qutan, xinzhuang
    await page.fill("#search", "")
    # Keyboard: collapse and expand a township, select it as the branch shown.
    qutan = page.locator('[data-select="qutan"]')
    await qutan.focus()
    await page.keyboard.press("ArrowLeft")
    await expect(village).to_have_count(0)
    await page.keyboard.press("ArrowRight")
    await expect(village).to_have_count(1)
    await page.keyboard.press("Enter")
    await expect(page.locator("#branch-name")).to_have_text("瞿昙镇")

    # A village terminal publishes over WHIP: its node and the rollups change without a reload.
    publisher = console_hub.sign("t-xinzhuang", "xinzhuang", "terminal")
    session = await publish(http, console_hub, publisher, "site-xinzhuang")
    started = time.monotonic()
    try:
        await expect(village).to_have_attribute("data-in-session", "true", timeout=5_000)
        await expect(page.locator('[data-rollup="ledu"]')).to_contain_text("1/4", timeout=5_000)
        took = time.monotonic() - started
        print(f"tree updated {took:.2f} s after the publish call returned")  # bounded by the waits above
        await expect(page.locator('[data-rollup="qutan"]')).to_contain_text("1/2")

        # A terminal joining over the event socket: presence and its room update the tree too.
        terminal = console_hub.sign("t-taizi", "taizi", "terminal")
        async with http.ws_connect(f"{console_hub.url}/ws?token={terminal}") as ws:
            await ws.send_json({"type": "join", "room": "site-taizi"})
            await expect(page.locator('[data-select="taizi"]')).to_have_attribute("data-online", "true")
            await expect(page.locator('[data-rollup="ledu"]')).to_contain_text("2/4")
        await expect(page.locator('[data-select="taizi"]')).to_have_attribute("data-online", "false")

        # The stream's thumbnail shows its snapshot (taken by the hub, announced by a "snapshot" event).
        selector = f'.thumb[data-stream-id="{session.resource_id}"] img'
        await page.wait_for_function(
            "sel => { const img = document.querySelector(sel); return img && img.complete && img.naturalWidth > 0; }",
            arg=selector,
            timeout=20_000,
            polling=200,
        )
        # Click a thumbnail: it goes to the selected pane and plays.
        thumb = page.locator(f'.thumb[data-stream-id="{session.resource_id}"]')
        await page.locator('.pane[data-index="0"]').click()
        await thumb.click()
        pane0 = page.locator('.pane[data-index="0"]')
        await expect(pane0).to_have_attribute("data-stream-id", session.resource_id)
        await expect(pane0).to_have_attribute("data-status", "live")
        await assert_playing(page, pane0)
        # Fullscreen a pane (the Fullscreen API; the click is the user gesture it needs), and back.
        await pane0.locator(".pane-full").click()
        await page.wait_for_function("() => document.fullscreenElement?.dataset.index === '0'", polling=100)
        await pane0.locator(".pane-full").click()
        await page.wait_for_function("() => document.fullscreenElement === null", polling=100)
        # Drag the village from the tree onto another pane: it shows the site's stream.
        await village.drag_to(page.locator('.pane[data-index="3"]'))
        pane3 = page.locator('.pane[data-index="3"]')
        await expect(pane3).to_have_attribute("data-feed", "site:xinzhuang")
        await expect(pane3).to_have_attribute("data-status", "live")
        await assert_playing(page, pane3)
    finally:
        await session.close()
    # The stream ended: the panes say so and the village is idle again.
    await expect(page.locator('.pane[data-index="3"]')).to_have_attribute("data-status", "offline")
    await expect(village).to_have_attribute("data-in-session", "false")


async def test_patrol_switches_panes_on_time_and_layouts_are_restored(
    console_hub: HubProcess, browser: Browser, http: aiohttp.ClientSession
) -> None:
    token = console_hub.sign("op-qutan", "qutan", "operator")
    sessions = [
        await publish(http, console_hub, console_hub.sign(f"t-{v}", v, "terminal"), f"site-{v}")
        for v in ("qutancun", "xinzhuang")
    ]
    try:
        page = await open_console(browser, console_hub, token)
        await expect(page.locator(".thumb")).to_have_count(2)
        await page.select_option("#wall-grid", "1")
        await expect(page.locator(".pane")).to_have_count(1)
        await page.fill("#patrol-seconds", "2")
        # Record when the pane switches to another stream, in page time.
        await page.evaluate(
            """() => {
                window.switches = [];
                const pane = document.querySelector('.pane[data-index="0"]');
                new MutationObserver(() => {
                    const last = window.switches[window.switches.length - 1];
                    const now = pane.dataset.streamId;
                    if (now && (!last || last[1] !== now)) window.switches.push([performance.now(), now]);
                }).observe(pane, { attributes: true, attributeFilter: ["data-stream-id"] });
            }"""
        )
        await page.click("#patrol-toggle")
        await page.wait_for_function("() => window.switches.length >= 4", timeout=20_000, polling=100)
        switches = await page.evaluate("window.switches")
        times = [t for t, _ in switches]
        gaps = [(b - a) / 1000 for a, b in zip(times, times[1:], strict=False)]
        print("patrol gaps (s):", [round(g, 3) for g in gaps])
        # Each step is due at start + k * 2 s: single gaps may jitter with the machine's load (but a
        # skipped or doubled step would be 0 or 4 s), their mean may not.
        assert all(abs(g - 2.0) < 1.0 for g in gaps), gaps
        assert abs(sum(gaps) / len(gaps) - 2.0) < 0.1, gaps
        shown = [stream for _, stream in switches]
        assert set(shown) == {s.resource_id for s in sessions}
        assert all(a != b for a, b in zip(shown, shown[1:], strict=False)), shown  # it alternates
        # Stopped, the pane keeps playing the feed it was showing.
        await page.click("#patrol-toggle")
        await expect(page.locator("#patrol-toggle")).to_have_attribute("data-on", "false")
        await expect(page.locator('.pane[data-index="0"]')).to_have_attribute("data-status", "live", timeout=5_000)
        await assert_playing(page, page.locator('.pane[data-index="0"]'))

        # Save the wall (patrol included) and open the console again: it comes back patrolling.
        await page.click("#patrol-toggle")
        await page.fill("#layout-name", "patrol-1x1")
        await page.click("#layout-save")
        await expect(page.locator("#layout-select")).to_have_value("patrol-1x1")
        await page.close()
        page = await open_console(browser, console_hub, token)
        await expect(page.locator(".pane")).to_have_count(1)
        await expect(page.locator("#patrol-toggle")).to_have_attribute("data-on", "true")
        await expect(page.locator('.pane[data-index="0"]')).to_have_attribute("data-status", "live")
    finally:
        for session in sessions:
            await session.close()


async def test_other_county_neither_sees_nor_walls_it(
    console_hub: HubProcess, browser: Browser, http: aiohttp.ClientSession
) -> None:
    guinan = console_hub.sign("op-guinan", "guinan", "operator")
    publisher = console_hub.sign("t-hongzhuang", "hongzhuang", "terminal")
    session = await publish(http, console_hub, publisher, "site-hongzhuang")
    try:
        # A saved layout naming Ledu's stream and site (e.g. written through the API) ...
        layout = {"name": "wrong", "grid": 4, "panes": [{"stream_id": session.resource_id}, {"site_id": "hongzhuang"}]}
        async with http.put(
            f"{console_hub.url}/api/console/layouts",
            json={"layouts": [layout], "current": "wrong"},
            headers={"Authorization": f"Bearer {guinan}"},
        ) as r:
            assert r.status == 200
        page = await open_console(browser, console_hub, guinan)
        await expect(page.locator('[data-select="rianxiuma"]')).to_be_visible()
        for outside in ("ledu", "hongzhuang", "qinghai", "haidong"):
            assert await page.locator(f'[data-select="{outside}"]').count() == 0
        # ... plays nothing: the hub refuses the stream, the site is unknown here.
        await expect(page.locator('.pane[data-index="0"]')).to_have_attribute("data-status", "forbidden")
        await expect(page.locator('.pane[data-index="1"]')).to_have_attribute("data-status", "offline")
        frames = await video_stats(page.locator('.pane[data-index="0"] video'))
        assert frames["width"] == 0 and not frames["frames"], frames
        assert await page.locator(".thumb").count() == 0

        # English mode shows no Chinese.
        await page.click("#lang-toggle")
        await expect(page.locator("#patrol-toggle")).to_have_text("Start patrol")
        text = await screen_text(page)
        assert not CJK.search(text), CJK.findall(text)
    finally:
        await session.close()


async def test_sites_go_online_and_offline_by_deltas_and_resync_after_a_drop(
    console_hub: HubProcess, browser: Browser, http: aiohttp.ClientSession
) -> None:
    """The console loads its status once; a village going online and offline
    twice is shown from the event socket's deltas, with no status request.
    When its socket drops and a change happens meanwhile, the reconnected
    socket's sequence number makes it load the status once more."""
    page = await browser.new_page(viewport={"width": 1440, "height": 900})
    status_requests: list[str] = []
    page.on("request", lambda r: "/api/console/status" in r.url and status_requests.append(r.url))
    sockets = []

    def proxy(ws) -> None:  # type: ignore[no-untyped-def]
        sockets.append(ws)
        if len(sockets) == 1:
            ws.connect_to_server()  # later ones wait for the test (below)

    await page.route_web_socket(re.compile(r"/ws\?"), proxy)
    await page.goto(f"{console_hub.url}/console?token={console_hub.sign('op-ledu2', 'ledu', 'operator')}")
    await expect(page.locator("#conn")).to_have_attribute("data-state", "open")
    village = page.locator('[data-select="hongzhuang"]')
    await expect(village).to_have_attribute("data-online", "false")
    assert len(status_requests) == 1 and "compact=1" in status_requests[0]

    terminal = console_hub.sign("t-hongzhuang2", "hongzhuang", "terminal")
    for _ in range(2):
        async with http.ws_connect(f"{console_hub.url}/ws?token={terminal}"):
            await expect(village).to_have_attribute("data-online", "true")
            await expect(page.locator('[data-rollup="chengtai"]')).to_contain_text("1/2")
        await expect(village).to_have_attribute("data-online", "false")
        await expect(page.locator('[data-rollup="chengtai"]')).to_contain_text("0/2")
    assert len(status_requests) == 1, status_requests  # deltas only

    # The console's socket drops; the village comes online while it is away.
    await sockets[0].close(code=4000, reason="test drop")
    await expect(page.locator("#conn")).not_to_have_attribute("data-state", "open")
    async with http.ws_connect(f"{console_hub.url}/ws?token={terminal}") as away:
        await away.receive_json()  # hello: its presence is out
        for _ in range(100):  # api.js reconnects after 0.5 s, to a socket held back until now
            if len(sockets) == 2:
                break
            await asyncio.sleep(0.1)
        sockets[1].connect_to_server()
        await expect(page.locator("#conn")).to_have_attribute("data-state", "open")
        await expect(village).to_have_attribute("data-online", "true")
        assert len(status_requests) == 2, status_requests  # resynchronized once
        await away.close()
    await expect(village).to_have_attribute("data-online", "false")
    assert len(status_requests) == 2
    await page.close()
