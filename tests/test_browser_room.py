"""The room page in real browsers: two mediators see each other, mute, leave;
a party joins from an invite link that opens nothing else; a stream of the
Python client plays; a higher-level site sees its invitation live.

A hub runs as a subprocess with media on 127.0.0.1 only; each browser
context is one person with Chromium's fake camera and microphone.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from playwright.async_api import Browser, Locator, Page, expect

from client import bot
from tests.browser import assert_playing, screen_text

from .conftest import LOOPBACK_ONLY, HubProcess, start_hub, wait_for_port

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "artifacts"
ROOM = "site-rianxiuma"
CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")

expect.set_options(timeout=20_000)


@pytest.fixture(scope="module")
def room_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubProcess]:
    """A hub of its own, so rosters start empty."""
    process = start_hub(tmp_path_factory.mktemp("room-hub"))
    yield process
    process.stop()


async def new_page(browser: Browser) -> Page:
    context = await browser.new_context(viewport={"width": 1440, "height": 900})
    page = await context.new_page()
    page.set_default_timeout(20_000)
    page.on("pageerror", lambda e: print(f"[browser pageerror] {e}"))
    page.on("console", lambda m: m.type in ("error", "warning") and print(f"[browser {m.type}] {m.text}"))
    return page


async def join(page: Page, url: str, name: str | None = None) -> None:
    """Open the room page, wait for the camera preview, type a name and join."""
    await page.goto(url)
    await expect(page.locator("#prejoin")).to_be_visible()
    await page.wait_for_function("() => document.querySelector('#preview').videoWidth > 0")
    if name is not None:
        await page.fill("#name", name)
    await page.click("#join")
    await expect(page.locator("#room")).to_be_visible()
    await expect(page.locator(".room-tile.self")).to_be_visible()


def tile_of(page: Page, name: str) -> Locator:
    return page.locator(".room-tile:not(.self)", has=page.locator(".tile-name", has_text=name))


def restart(hub: HubProcess) -> HubProcess:
    """Stop the hub and start it again on the same port and data (tokens stay valid; live state is lost)."""
    hub.stop()
    port = int(hub.url.rsplit(":", 1)[1])
    proc = subprocess.Popen(
        [sys.executable, "-m", "hub", "serve", "--port", str(port), "--data", str(hub.data)],
        cwd=ROOT,
        env=os.environ | {"HUB_ICE_ADDRESSES": LOOPBACK_ONLY},
        stdout=hub.log.open("ab"),
        stderr=subprocess.STDOUT,
    )
    wait_for_port(port, proc)
    return HubProcess(hub.url, hub.data, proc, hub.log)


async def test_two_mediators_a_guest_mute_and_leave(room_hub: HubProcess, browser: Browser) -> None:
    village = room_hub.token("med-rianxiuma", "rianxiuma", "mediator")
    township = room_hub.token("med-guomaying", "guomaying", "mediator")
    a = await new_page(browser)
    b = await new_page(browser)
    guest = await new_page(browser)

    await join(a, f"{room_hub.url}/rooms/{ROOM}?token={village}", "王芳")
    assert "token=" not in a.url
    await join(b, f"{room_hub.url}/rooms/{ROOM}?token={township}", "李明")

    # Each sees the other's camera playing, with name and site name.
    b_in_a = tile_of(a, "李明")
    a_in_b = tile_of(b, "王芳")
    await expect(b_in_a.locator(".tile-site")).to_have_text("过马营镇")
    await expect(a_in_b.locator(".tile-site")).to_have_text("日安秀麻村")
    await assert_playing(a, b_in_a)
    await assert_playing(b, a_in_b)
    await expect(a.locator("#people .person")).to_have_count(2)
    # The fake microphone beeps: whoever is heard is highlighted, one tile at a time.
    await expect(a.locator(".room-tile.speaking")).to_have_count(1, timeout=10_000)

    # Muting the camera and the microphone in one is shown in the other.
    await b.click("#btn-cam")
    await b.click("#btn-mic")
    await expect(b_in_a).to_have_attribute("data-video", "false")
    await expect(b_in_a.locator(".cam-off")).to_be_visible()
    await expect(b_in_a.locator(".icon-muted")).to_be_visible()
    await b.click("#btn-cam")
    await expect(b_in_a).to_have_attribute("data-video", "true")
    await expect(b_in_a.locator(".cam-off")).to_have_count(0)

    # Chat and a raised hand reach the others.
    await b.click(".side-tab[data-panel=chat]")
    await b.fill("#chat-input", "大家好")
    await b.press("#chat-input", "Enter")
    await expect(a.locator("#chat-unread")).to_have_text("1")
    await expect(a.locator("#chat-log")).to_contain_text("大家好")
    await b.click("#btn-hand")
    await expect(b_in_a.locator(".badge-hand")).to_be_visible()

    # The mediator makes a guest link; the party opens it, must type a name, and joins.
    await a.click("#tab-invite")
    await a.select_option("#invite-ttl", "1800")
    await a.click("#invite-create")
    await expect(a.locator("#invite-result")).to_be_visible()
    link = await a.locator("#invite-url").input_value()
    assert link.startswith(f"{room_hub.url}/rooms/{ROOM}?token=")
    await expect(a.locator("#invite-expiry")).to_contain_text("有效期至")
    await guest.goto(link)
    await expect(guest.locator("#prejoin")).to_be_visible()
    await guest.click("#join")
    await expect(guest.locator("#prejoin-error")).to_have_attribute("data-error", "room.nameRequired")
    await guest.fill("#name", "当事人张某")
    await guest.click("#join")
    await expect(guest.locator("#room")).to_be_visible()
    await expect(guest.locator("#tab-invite")).to_be_hidden()
    party_in_a = tile_of(a, "当事人张某")
    await expect(party_in_a.locator(".tile-site")).to_have_text("日安秀麻村")
    await assert_playing(a, party_in_a)
    await assert_playing(guest, tile_of(guest, "王芳"))

    # Three participants, in Chinese: the artifact the README links.
    await a.click(".side-tab[data-panel=people]")
    await expect(a.locator("#people .person")).to_have_count(3)
    await expect(a.locator(".room-tile[data-status=live]")).to_have_count(2)
    ARTIFACTS.mkdir(exist_ok=True)
    await a.screenshot(path=str(ARTIFACTS / "room-3-participants.png"))
    await guest.screenshot(path=str(ARTIFACTS / "room-3-participants-guest.png"))
    (ROOT / "docs" / "img").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(ARTIFACTS / "room-3-participants.png", ROOT / "docs" / "img" / "room.png")

    # The same guest link is refused, with a clear message, for another room.
    await guest.goto(f"{room_hub.url}/rooms/site-shangzhai")
    message = guest.locator("#fatal-message")
    await expect(message).to_have_attribute("data-error", "error.roomForbidden")
    await expect(message).to_contain_text("您无权进入该会议室")
    await expect(guest.locator("#prejoin")).to_be_hidden()
    await expect(party_in_a).to_have_count(0)  # leaving the page left the room

    # Leaving removes the tile for the others.
    await b.click("#btn-leave")
    await expect(b.locator("#left")).to_be_visible()
    await expect(b_in_a).to_have_count(0)
    await expect(a.locator("#people .person")).to_have_count(1)

    for page in (a, b, guest):
        await page.context.close()


async def test_python_client_stream_plays_in_kiosk(room_hub: HubProcess, browser: Browser) -> None:
    camera = room_hub.token("cam-rianxiuma", "rianxiuma", "terminal")
    kiosk = room_hub.token("kiosk-rianxiuma", "rianxiuma", "terminal")
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as http:
        video = bot.SyntheticVideo("vp8", 320, 240, 15)
        session = await asyncio.wait_for(bot.publish(http, room_hub.url, camera, ROOM, [video]), 20)
        page = await new_page(browser)
        try:
            # The kiosk link joins straight away with the default devices.
            await page.goto(f"{room_hub.url}/rooms/{ROOM}?token={kiosk}&autojoin=1")
            await expect(page.locator("#room")).to_be_visible()
            await expect(page.locator("#prejoin")).to_be_hidden()
            tile = page.locator(f'.room-tile[data-stream-id="{session.resource_id}"]')
            await expect(tile.locator(".tile-name")).to_have_text("cam-rianxiuma")
            stats = await assert_playing(page, tile, min_brightness=20)
            assert (stats["width"], stats["height"]) == (320, 240)

            # The whole room page switches language, site names included.
            await page.click("#lang-toggle")
            await expect(tile.locator(".tile-site")).to_have_text("Rian Xiuma Village")
            await expect(page.locator("#btn-leave")).to_have_text("Leave")
            assert not CJK.search(await screen_text(page))
        finally:
            await page.context.close()
            await asyncio.wait_for(session.close(), 10)


async def test_guest_kiosk_link_asks_for_the_name(room_hub: HubProcess, browser: Browser) -> None:
    """A guest must type a name, so ?autojoin=1 shows the name prompt instead of a blank page."""
    guest = room_hub.token("party-kiosk", "rianxiuma", "guest", room=ROOM)
    page = await new_page(browser)
    try:
        await page.goto(f"{room_hub.url}/rooms/{ROOM}?token={guest}&autojoin=1")
        await expect(page.locator("#name")).to_be_visible()
        await expect(page.locator("#name")).to_be_focused()
        await page.wait_for_function("() => document.querySelector('#preview').videoWidth > 0")
        await page.fill("#name", "当事人李某")
        await page.click("#join")
        await expect(page.locator("#room")).to_be_visible()
        await expect(page.locator(".room-tile.self .tile-name")).to_contain_text("当事人李某")
    finally:
        await page.context.close()


async def test_higher_site_sees_invitation_live(room_hub: HubProcess, browser: Browser) -> None:
    village = room_hub.token("med-rianxiuma", "rianxiuma", "mediator")
    township = room_hub.token("med-guomaying", "guomaying", "mediator")
    home = await new_page(browser)
    room = await new_page(browser)
    try:
        await home.goto(f"{room_hub.url}/?token={township}")
        await expect(home.locator("#tree")).to_contain_text("过马营镇")
        await expect(home.locator(".invitation")).to_have_count(0)

        await join(room, f"{room_hub.url}/rooms/{ROOM}?token={village}", "王芳")
        # The home page leads into a live room.
        await home.locator("#tree .node", has_text="日安秀麻村").click()
        await expect(home.locator("#enter-room")).to_have_attribute("href", f"/rooms/{ROOM}")
        await expect(home.locator("#enter-room")).to_have_text("进入会议室")

        await room.click("#tab-invite")
        higher = room.locator(".higher-site")
        await expect(higher).to_have_count(4)  # township, county, prefecture, province
        await expect(higher.first.locator(".name")).to_have_text("过马营镇")
        await higher.first.locator("button").click()
        await expect(higher.first.locator("button")).to_have_text("已邀请")

        # The township's home page shows it without reloading, and one click joins.
        invitation = home.locator(".invitation")
        await expect(invitation).to_have_count(1)
        await expect(invitation).to_contain_text("王芳")
        await expect(invitation).to_contain_text("日安秀麻村")
        await invitation.locator(".invitation-join").click()
        await expect(home).to_have_url(f"{room_hub.url}/rooms/{ROOM}")
        await expect(home.locator("#prejoin")).to_be_visible()
        await expect(home.locator("#name")).to_have_value("med-guomaying")
    finally:
        await home.context.close()
        await room.context.close()


async def test_reconnects_after_losing_the_hub(tmp_path: Path, browser: Browser) -> None:
    hub = start_hub(tmp_path / "hub")
    village = hub.token("med-rianxiuma", "rianxiuma", "mediator")
    township = hub.token("med-guomaying", "guomaying", "mediator")
    a = await new_page(browser)
    b = await new_page(browser)
    try:
        await join(a, f"{hub.url}/rooms/{ROOM}?token={village}", "王芳")
        await join(b, f"{hub.url}/rooms/{ROOM}?token={township}", "李明")
        b_in_a = tile_of(a, "李明")
        await assert_playing(a, b_in_a)
        before = await b_in_a.get_attribute("data-stream-id")

        # The network to the hub goes away: both notice, then both come back by themselves.
        hub = restart(hub)
        b_in_a = a.locator(f'.room-tile:not(.self):not([data-stream-id="{before}"])', has_text="李明")
        await expect(b_in_a).to_have_count(1, timeout=40_000)
        await assert_playing(a, b_in_a)
        await assert_playing(b, tile_of(b, "王芳"))
        await expect(a.locator(".room-tile:not(.self)")).to_have_count(1)
        await expect(a.locator("#banner")).to_be_hidden()
        await expect(a.locator("#people .person")).to_have_count(2)
    finally:
        await a.context.close()
        await b.context.close()
        hub.stop()


async def test_room_errors_are_explained(room_hub: HubProcess, browser: Browser) -> None:
    expired = room_hub.token("med-rianxiuma", "rianxiuma", "mediator", ttl=-60)
    village = room_hub.token("med-rianxiuma", "rianxiuma", "mediator")
    page = await new_page(browser)
    message = page.locator("#fatal-message")
    try:
        await page.goto(f"{room_hub.url}/rooms/{ROOM}?token={expired}")
        await expect(message).to_have_attribute("data-error", "error.roomUnauthorized")
        await expect(message).to_contain_text("已过期或无效")

        await page.goto(f"{room_hub.url}/rooms/room-nothere?token={village}")
        await expect(message).to_have_attribute("data-error", "error.roomNotFound")

        await page.route("**/api/me", lambda route: route.abort("connectionrefused"))
        await page.goto(f"{room_hub.url}/rooms/{ROOM}")
        await expect(message).to_have_attribute("data-error", "error.unreachable")
        await expect(message).to_contain_text("无法连接到视联网中心服务器")
        await page.unroute("**/api/me")
        await expect(page.locator("#prejoin")).to_be_visible(timeout=15_000)  # it retries by itself
    finally:
        await page.context.close()

    # The browser refuses the camera, or there is none: said so, and one may still join to watch and talk.
    for error, key, text in [
        ("NotAllowedError", "error.permission", "未获得摄像头和麦克风权限"),
        ("NotFoundError", "error.noCamera", "未检测到摄像头或麦克风"),
    ]:
        page = await new_page(browser)
        try:
            await page.add_init_script(
                f"navigator.mediaDevices.getUserMedia = () => Promise.reject(new DOMException('no', '{error}'));"
            )
            await page.goto(f"{room_hub.url}/rooms/{ROOM}?token={village}")
            box = page.locator("#prejoin-error")
            await expect(box).to_have_attribute("data-error", key)
            await expect(box).to_contain_text(text)
            await page.click("#join")
            await expect(page.locator("#room")).to_be_visible()
            await expect(page.locator("#btn-cam")).to_be_disabled()
            await expect(page.locator(".room-tile.self .cam-off")).to_be_visible()
        finally:
            await page.context.close()


# A screen to share: headless Chromium has no screen picker, so a painted canvas stands in.
FAKE_SCREEN = """
navigator.mediaDevices.getDisplayMedia = async () => {
    const canvas = Object.assign(document.createElement("canvas"), { width: 640, height: 360 });
    const ctx = canvas.getContext("2d");
    let n = 0;
    setInterval(() => {
        ctx.fillStyle = "#f0f4fa";
        ctx.fillRect(0, 0, 640, 360);
        ctx.fillStyle = "#1d4ed8";
        ctx.fillRect((n++ * 8) % 640, 120, 120, 120);
    }, 66);
    return canvas.captureStream(15);
};
"""


async def test_screen_share_is_a_second_stream(room_hub: HubProcess, browser: Browser) -> None:
    village = room_hub.token("med-rianxiuma", "rianxiuma", "mediator")
    township = room_hub.token("med-guomaying", "guomaying", "mediator")
    a = await new_page(browser)
    b = await new_page(browser)
    try:
        await a.add_init_script(FAKE_SCREEN)
        await join(a, f"{room_hub.url}/rooms/{ROOM}?token={village}", "王芳")
        await join(b, f"{room_hub.url}/rooms/{ROOM}?token={township}", "李明")
        await a.click("#btn-share")
        await expect(a.locator("#btn-share")).to_have_text("停止共享")

        screen = b.locator('.room-tile[data-kind="screen"]')
        await expect(screen.locator(".tile-kind")).to_have_text("屏幕共享")
        await expect(screen.locator(".tile-name")).to_have_text("王芳")
        stats = await assert_playing(b, screen, min_brightness=150)
        assert (stats["width"], stats["height"]) == (640, 360)
        await expect(b.locator('.room-tile[data-kind="camera"]:not(.self)')).to_have_count(1)  # the camera stays

        await a.click("#btn-share")
        await expect(screen).to_have_count(0)
        await expect(b.locator(".room-tile:not(.self)")).to_have_count(1)
    finally:
        await a.context.close()
        await b.context.close()


async def test_everyone_sees_the_room_being_recorded(room_hub: HubProcess, browser: Browser) -> None:
    room = "site-xinhua"
    mediator = room_hub.token("m-xinhua", "xinhua", "mediator")
    invite = room_hub.token("party-xinhua", "xinhua", "guest", room=room)
    host, party = await new_page(browser), await new_page(browser)
    try:
        await join(host, f"{room_hub.url}/rooms/{room}?token={mediator}")
        await join(party, f"{room_hub.url}/rooms/{room}?token={invite}", name="当事人乙")
        await expect(party.locator("#btn-rec")).to_be_hidden()  # a party cannot switch it
        await expect(party.locator("#rec-badge")).to_be_hidden()
        await host.click("#btn-rec")
        await expect(party.locator("#rec-badge")).to_be_visible()
        await expect(party.locator("#rec-badge")).to_have_text("● 录制中")
        await expect(host.locator("#btn-rec .ctl-label")).to_have_text("停止录制")
        await host.click("#btn-rec")
        await expect(party.locator("#rec-badge")).to_be_hidden()
    finally:
        for page in (host, party):
            await page.context.close()
