"""Headless Chromium for browser tests (see NOTES.md, "Headless Chromium with WebRTC").

Media must stay on loopback: start the hub with HUB_ICE_ADDRESSES='["127.0.0.1"]'
and use `hub.media.ice.use_addresses(["127.0.0.1"])` for Python peers in the test.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from playwright.async_api import Browser, Locator, Page, async_playwright

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--allow-loopback-in-peer-connection",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
]


@asynccontextmanager
async def chromium(timeout_ms: float = 30_000) -> AsyncIterator[Browser]:
    """A headless Chromium that may use the fake camera and loopback ICE."""
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS, timeout=timeout_ms
        )
        try:
            yield browser
        finally:
            await browser.close()


_VIDEO_STATS = """(video) => {
    const q = video.getVideoPlaybackQuality ? video.getVideoPlaybackQuality() : null;
    let brightness = null;
    if (video.videoWidth > 0) {
        const canvas = document.createElement("canvas");
        canvas.width = 64;
        canvas.height = 48;
        const ctx = canvas.getContext("2d", { willReadFrequently: true });
        ctx.drawImage(video, 0, 0, canvas.width, canvas.height);
        const px = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
        let sum = 0;
        for (let i = 0; i < px.length; i += 4) sum += (px[i] + px[i + 1] + px[i + 2]) / 3;
        brightness = sum / (px.length / 4);
    }
    return {
        width: video.videoWidth,
        height: video.videoHeight,
        frames: q ? q.totalVideoFrames : null,
        currentTime: video.currentTime,
        paused: video.paused,
        brightness,
    };
}"""


async def video_stats(video: Locator, timeout_ms: float = 5_000) -> dict:
    """Size, decoded frame count, paused state and mean brightness (0-255) of a <video>."""
    return await video.evaluate(_VIDEO_STATS, timeout=timeout_ms)


async def screen_text(page: Page) -> str:
    """Everything visible except the language toggle, which names the other language."""
    return await page.evaluate(
        """() => {
            const body = document.body.cloneNode(true);
            body.querySelector("#lang-toggle").remove();
            document.documentElement.append(body);
            const text = body.innerText;
            body.remove();
            return text;
        }"""
    )


async def assert_playing(
    page: Page, tile: Locator, frames: int = 5, within: float = 8.0, min_brightness: float | None = None
) -> dict:
    """The tile's <video> has a size and keeps decoding frames: `frames` more within `within` seconds.

    Given time, not a rate: a Chromium that encodes three simulcast layers for each of three pages
    on a loaded two-core machine drops its frame rate to a few per second (its CPU adaptation), and
    the hub's layer switch waits for a keyframe; a video that stopped still fails.
    """
    video = tile.locator("video")
    await page.wait_for_function("v => v.videoWidth > 0", arg=await video.element_handle(), timeout=20_000)
    before = after = await video_stats(video)
    deadline = time.monotonic() + within
    while after["frames"] - before["frames"] < frames and time.monotonic() < deadline:
        await asyncio.sleep(0.25)
        after = await video_stats(video)
    assert after["width"] > 0 and after["height"] > 0, after
    assert after["frames"] - before["frames"] >= frames, (before, after)
    if min_brightness is not None:
        assert after["brightness"] > min_brightness, after
    return after
