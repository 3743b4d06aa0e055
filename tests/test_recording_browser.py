"""The playback page in headless Chromium: it lists a recording and plays it."""

from __future__ import annotations

import asyncio

from playwright.async_api import expect

from tests.browser import chromium

from .conftest import HubProcess
from .recording_helpers import record

expect.set_options(timeout=15_000)


async def test_playback_page_lists_and_plays_a_recording(hub: HubProcess):
    recorded = await record(hub, 5)
    async with chromium() as browser:
        page = await browser.new_page()
        await page.goto(f"{hub.url}/recordings?token={recorded.token}")
        await expect(page.locator("h1")).to_have_text("综治视联网")  # Chinese first
        row = page.locator(f'tr[data-id="{recorded.id}"]')
        await expect(row).to_be_visible()
        assert "token=" not in page.url  # taken into session storage, out of the address bar

        await row.locator("a").click()
        await page.wait_for_url(f"**/recordings/{recorded.id}")
        video = page.locator("#player video")
        await expect(video).to_have_count(1)
        await expect(page.locator(".rec-name")).to_have_text(recorded.manifest["streams"][0]["name"])
        await page.wait_for_function("document.querySelector('#player video').readyState >= 1")
        await page.locator("#play").click()
        first = await video.evaluate("v => v.currentTime")
        await asyncio.sleep(1.5)
        later = await video.evaluate("v => v.currentTime")
        assert later > first + 0.5, (first, later)
        assert await video.evaluate("v => v.videoWidth") == 320

        await page.locator("#verify").click()
        await expect(page.locator("#verify-result")).to_have_class("rec-ok")

        await page.locator("#lang-toggle").click()
        await expect(page.locator("#play")).to_have_text("Pause")
