"""Simulcast in Chromium: the room page publishes its camera in three layers,
and a tile gets the layer its drawn size needs (read from /metrics)."""

from __future__ import annotations

import asyncio
import re

import aiohttp
from playwright.async_api import Browser, expect

from client import bot
from client.simulcast import SimulcastVideo

from .conftest import HubProcess
from .test_browser_room import new_page, room_hub  # noqa: F401 - the room page's own hub
from .test_simulcast import layer_of

ROOM = "site-rianxiuma"
LAYER = re.compile(r'hub_subscription_layer\{layer="(\w*)",stream="([^"]+)",subscription="([^"]+)"\}')


async def layers_in_metrics(http: aiohttp.ClientSession, hub: HubProcess, stream: str) -> list[str]:
    async with http.get(f"{hub.url}/metrics") as r:
        text = await r.text()
    return [m.group(1) for m in LAYER.finditer(text) if m.group(2) == stream]


async def test_room_page_publishes_layers_and_tiles_get_what_they_draw(room_hub: HubProcess, browser: Browser):  # noqa: F811
    camera = room_hub.token("cam-rianxiuma", "rianxiuma", "terminal")
    kiosk = room_hub.token("kiosk-rianxiuma", "rianxiuma", "terminal")
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as http:
        video = SimulcastVideo("vp8", 640, 480, 15)
        published = await asyncio.wait_for(bot.publish(http, room_hub.url, camera, ROOM, [video]), 20)
        page = await new_page(browser)
        viewer = None
        try:
            await page.goto(f"{room_hub.url}/rooms/{ROOM}?token={kiosk}&autojoin=1")
            await expect(page.locator("#room")).to_be_visible()
            tile = page.locator(f'.room-tile[data-stream-id="{published.resource_id}"]')
            handle = await tile.locator("video").element_handle()
            await page.wait_for_function("v => v.videoWidth > 0", arg=handle, timeout=20_000)
            # The size the tile draws the picture at, in device pixels (object-fit contain or cover).
            drawn = await page.evaluate(
                """v => {
                    const fit = getComputedStyle(v).objectFit;
                    const s = (fit === "cover" ? Math.max : Math.min)(v.clientWidth / v.videoWidth,
                                                                      v.clientHeight / v.videoHeight);
                    return [v.videoWidth * s * devicePixelRatio, v.videoHeight * s * devicePixelRatio];
                }""",
                handle,
            )
            sizes = {"q": (160, 120), "h": (320, 240), "f": (640, 480)}
            fits = [rid for rid, (w, h) in sizes.items() if w * 8 >= drawn[0] * 7 and h * 8 >= drawn[1] * 7]
            expected = fits[0] if fits else "f"
            for _ in range(100):
                if await layers_in_metrics(http, room_hub, published.resource_id) == [expected]:
                    break
                await asyncio.sleep(0.2)
            assert await layers_in_metrics(http, room_hub, published.resource_id) == [expected], (drawn, expected)
            await page.wait_for_function(
                "([v, w]) => v.videoWidth === w", arg=[handle, sizes[expected][0]], timeout=20_000
            )

            # The page's own camera went out in layers: a viewer here sees them, sized by their keyframes.
            async with http.get(f"{room_hub.url}/api/rooms/{ROOM}", headers=bot._auth(kiosk)) as r:
                streams = [s for s in (await r.json())["streams"] if s["user"] == "kiosk-rianxiuma"]
            assert len(streams) == 1
            viewer = await bot.view(http, room_hub.url, kiosk, streams[0]["id"], kinds=("video",))
            for _ in range(100):
                state = await layer_of(http, viewer)
                if state["layers"] and all(layer["height"] for layer in state["layers"]):
                    break
                await asyncio.sleep(0.2)
            assert state["simulcast"] is True
            heights = [layer["height"] for layer in state["layers"]]
            assert [layer["rid"] for layer in state["layers"]] == ["q", "h", "f"], state
            assert heights == sorted(heights) and len(set(heights)) == 3, state
        finally:
            if viewer is not None:
                await viewer.close()
            await page.context.close()
            await asyncio.wait_for(published.close(), 10)
