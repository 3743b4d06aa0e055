"""The home view in a real browser: site tree, live badge, WHEP tiles, errors.

A hub runs as a subprocess (media on 127.0.0.1 only); this process publishes
synthetic VP8 with the project's WHIP client; headless Chromium opens the
operator link and must play the picture, follow streams appearing and ending
without a reload, and explain bad tokens and unreachable servers.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import aioice.ice
import pytest
from playwright.async_api import BrowserContext, Page, expect

from client import bot
from hub.media.ice import use_addresses
from tests.browser import assert_playing, screen_text

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "artifacts"
CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")

expect.set_options(timeout=15_000)


@dataclass
class HubProcess:
    base_url: str
    data: Path
    proc: subprocess.Popen[bytes]
    log: Path

    def token(self, user: str, site: str, role: str, *extra: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "hub", "token", "--data", str(self.data), "--user", user, "--site", site]
            + ["--role", role, *extra],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        return done.stdout.strip()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def hub_server(tmp_path_factory: pytest.TempPathFactory):
    data = tmp_path_factory.mktemp("hub-data")
    port = _free_port()
    log_path = data / "hub.log"
    env = os.environ | {"HUB_ICE_ADDRESSES": '["127.0.0.1"]'}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "hub", "serve", "--data", str(data), "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"hub exited with {proc.returncode}:\n{log_path.read_text()}")
            try:
                with urllib.request.urlopen(f"{base_url}/healthz", timeout=2) as response:
                    if json.load(response)["status"] == "ok":
                        break
            except (OSError, urllib.error.URLError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"hub did not answer /healthz within 30 s:\n{log_path.read_text()}")
            time.sleep(0.2)
        yield HubProcess(base_url, data, proc, log_path)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture
def loopback_media():
    """Python peers of this test offer only 127.0.0.1; whatever was chosen before is restored."""
    before = aioice.ice.get_host_addresses
    use_addresses(["127.0.0.1"])
    yield
    aioice.ice.get_host_addresses = before


async def new_page(browser, **context_options) -> tuple[BrowserContext, Page]:
    context = await browser.new_context(viewport={"width": 1440, "height": 900}, **context_options)
    page = await context.new_page()
    page.set_default_timeout(15_000)
    page.on("console", lambda m: print(f"[browser {m.type}] {m.text}"))
    page.on("pageerror", lambda e: print(f"[browser pageerror] {e}"))
    return context, page


async def publish(http: aiohttp.ClientSession, hub: HubProcess, token: str) -> bot.Session:
    video = bot.SyntheticVideo("vp8", 320, 240, 15)
    return await asyncio.wait_for(bot.publish(http, hub.base_url, token, "site-rianxiuma", [video]), 20)


async def test_home_tree_and_live_tiles(hub_server: HubProcess, browser, loopback_media) -> None:
    operator = hub_server.token("op-guinan", "guinan", "operator")
    village_cam = hub_server.token("cam-rianxiuma", "rianxiuma", "terminal", "--name", "调解室终端")
    township = hub_server.token("med-guomaying", "guomaying", "mediator", "--name", "镇调解员")

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as http:
        first = await publish(http, hub_server, village_cam)
        second = None
        context, page = await new_page(browser)
        try:
            await page.goto(f"{hub_server.base_url}/?token={operator}")
            tree = page.locator("#tree")
            await expect(tree).to_contain_text("贵南县")
            await expect(tree).to_contain_text("日安秀麻村")
            await expect(tree).not_to_contain_text("格尔木市")
            assert "token=" not in page.url
            assert await page.evaluate("sessionStorage.getItem('hub.token')") == operator

            # The county is labelled with its level; the village carries the live badge.
            county = tree.locator(".node", has_text="贵南县")
            await expect(county.locator(".level")).to_have_text("县区")
            village = tree.locator(".node", has_text="日安秀麻村")
            await expect(village.locator(".level")).to_have_text("村社区")
            await expect(village.locator(".badge-live")).to_be_visible()
            await expect(tree.locator(".node", has_text="上寨村").locator(".badge-live")).to_have_count(0)

            await village.click()
            tile = page.locator(f'.tile[data-stream-id="{first.resource_id}"]')
            await expect(tile).to_be_visible()
            await expect(tile.locator(".tile-name")).to_have_text("调解室终端")
            await expect(tile.locator(".tile-site")).to_have_text("日安秀麻村")
            stats = await assert_playing(page, tile, frames=10, min_brightness=20)  # 15 fps
            assert (stats["width"], stats["height"]) == (320, 240)
            await expect(tile).to_have_attribute("data-status", "live")

            # A stream published while the room is on screen appears without a reload.
            second = await publish(http, hub_server, township)
            tile2 = page.locator(f'.tile[data-stream-id="{second.resource_id}"]')
            await expect(tile2).to_be_visible()
            await expect(tile2.locator(".tile-site")).to_have_text("过马营镇")
            stats = await assert_playing(page, tile2, frames=10, min_brightness=20)  # 15 fps
            assert (stats["width"], stats["height"]) == (320, 240)
            await expect(page.locator(".tile")).to_have_count(2)

            ARTIFACTS.mkdir(exist_ok=True)
            await page.screenshot(path=str(ARTIFACTS / "home.png"))

            # Ending a publication removes its tile without a reload.
            await asyncio.wait_for(first.close(), 10)
            await expect(tile).to_have_count(0)
            await expect(tile2).to_be_visible()
            await asyncio.wait_for(second.close(), 10)
            second = None
            await expect(page.locator(".tile")).to_have_count(0)
            await expect(page.locator("#empty")).to_have_attribute("data-state", "home.noStreams")

            # The whole screen switches language; site names follow.
            await page.click("#lang-toggle")
            await expect(tree).to_contain_text("Guinan County")
            await expect(page.locator("#empty-title")).to_have_text("No video in this room yet")
            assert not CJK.search(await screen_text(page))
            await page.click("#lang-toggle")
            await expect(tree).to_contain_text("贵南县")
        finally:
            await context.close()
            if second is not None:
                await asyncio.wait_for(second.close(), 10)
            await asyncio.wait_for(first.close(), 10)  # a second DELETE is a no-op (404)


async def test_bad_tokens_are_explained(hub_server: HubProcess, browser) -> None:
    expired = hub_server.token("op-guinan", "guinan", "operator", "--ttl=-60")
    context, page = await new_page(browser)
    try:
        for token in ("not-a-token", expired):
            await page.goto(f"{hub_server.base_url}/?token={token}")
            message = page.locator("#fatal-message")
            await expect(message).to_have_attribute("data-error", "error.unauthorized")
            await expect(message).to_contain_text("登录凭证已过期或无效")
            await expect(page.locator("#layout")).to_be_hidden()
            assert "token=" not in page.url

        await page.click("#lang-toggle")
        await expect(page.locator("#fatal-message")).to_contain_text("has expired or is invalid")
        assert not CJK.search(await screen_text(page))

        # Opening the page without any token says how to sign in (in the chosen language).
        await page.evaluate("sessionStorage.clear()")
        await page.goto(f"{hub_server.base_url}/")
        await expect(page.locator("#fatal-message")).to_have_attribute("data-error", "error.noToken")
        await expect(page.locator("#fatal-message")).to_contain_text("operator link")
    finally:
        await context.close()


async def test_unreachable_and_forbidden_are_explained(hub_server: HubProcess, browser) -> None:
    operator = hub_server.token("op-guinan", "guinan", "operator")
    context, page = await new_page(browser)
    try:
        await page.route("**/api/me", lambda route: route.abort("connectionrefused"))
        await page.goto(f"{hub_server.base_url}/?token={operator}")
        message = page.locator("#fatal-message")
        await expect(message).to_have_attribute("data-error", "error.unreachable")
        await expect(message).to_contain_text("无法连接到视联网中心服务器")

        # It retries by itself and recovers once the server answers.
        await page.unroute("**/api/me")
        await expect(page.locator("#tree")).to_contain_text("贵南县", timeout=15_000)
        await expect(page.locator("#fatal")).to_be_hidden()

        problem = {"type": "about:blank", "title": "Forbidden", "status": 403, "detail": "outside"}
        await page.route(
            "**/api/sites",
            lambda route: route.fulfill(status=403, content_type="application/problem+json", body=json.dumps(problem)),
        )
        await page.reload()
        await expect(message).to_have_attribute("data-error", "error.forbidden")
        await expect(message).to_contain_text("不在您的辖区范围内")
    finally:
        await context.close()
