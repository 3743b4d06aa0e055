"""An emergency call in real browsers: a village terminal presses "call for
help" on its home page; it rings in the consoles of two operators above the
village; both press Answer at once and exactly one wins (or the first answer
reaches the other console before its click does), the other console
says who answered; the terminal's page moves into the call room by itself.
Convening a ticked village: its home page shows the invitation live and the
console's roll call follows its joining."""

from __future__ import annotations

import asyncio

import aiohttp
from playwright.async_api import Locator, Page, expect
from playwright.async_api import TimeoutError as PlaywrightTimeoutError

from tests.browser import chromium

from .conftest import HubProcess
from .test_browser_room import new_page
from .test_room_api import auth

VILLAGE_NAME = "上寨村"


async def outcome(page: Page, call_id: str) -> str:
    """'won' or 'lost', once the console shows which for this call."""
    line = page.locator(f'#dispatch .call[data-call-id="{call_id}"][data-state="answered"]')
    await expect(line).to_be_visible()
    return "won" if await line.locator(".call-enter").count() else "lost"


async def press(button: Locator) -> bool:
    """Click an Answer button; False if it went away first, because the other
    console's answer reached this one before its click did (a loaded machine)."""
    try:
        await button.click(timeout=5_000)
    except PlaywrightTimeoutError:
        return False
    return True


async def test_call_rings_in_two_consoles_and_one_answers(hub: HubProcess, http: aiohttp.ClientSession):
    county = hub.token("op-guinan", "guinan", "operator")
    prefecture = hub.token("op-hainan", "hainan", "operator")
    terminal = hub.token("term-shangzhai", "shangzhai", "terminal")
    async with chromium() as browser:
        consoles = [await new_page(browser), await new_page(browser)]
        home = await new_page(browser)
        try:
            for page, token in zip(consoles, (county, prefecture), strict=True):
                await page.goto(f"{hub.url}/console?token={token}")
                await expect(page.locator("#dispatch h2")).to_have_text("应急调度")
            await home.goto(f"{hub.url}/?token={terminal}")
            await home.locator(".help-call").click()
            await expect(home.locator(".help-status")).to_have_text("正在呼叫上级值班员…")

            answers = []
            for page in consoles:
                alert = page.locator(".call-alert", has_text=VILLAGE_NAME)
                await expect(alert).to_be_visible()
                answers.append(alert.locator(".call-answer"))
            call_id = await consoles[0].locator(".call-alert .call").get_attribute("data-call-id")
            # The caller's page names who answered for 1.5 s, then moves into the room; a click whose
            # button went away waits 5 s: read the caller's page while the consoles click.
            answered = home.locator(".help-status.answered")

            async def caller_saw() -> str:
                await expect(answered).to_be_visible()
                return await answered.text_content() or ""

            *clicked, caller_text = await asyncio.gather(*(press(button) for button in answers), caller_saw())
            assert any(clicked), "neither console could answer"

            results = [await outcome(page, call_id) for page in consoles]
            assert sorted(results) == ["lost", "won"]
            winner = consoles[results.index("won")]
            loser = consoles[results.index("lost")]
            winner_user = "op-guinan" if winner is consoles[0] else "op-hainan"
            line = f'#dispatch .call[data-call-id="{call_id}"]'
            await expect(loser.locator(f"{line} .call-outcome")).to_have_text(f"已由 {winner_user} 接听")
            for page in consoles:
                await expect(page.locator(".call-alert")).to_have_count(0)  # no longer ringing anywhere

            # The caller is taken into the winner's call room, camera on, without a click.
            link = await winner.locator(f"{line} .call-enter").get_attribute("href")
            room_id = link.split("/rooms/")[1].split("?")[0]
            assert winner_user in caller_text, caller_text
            await home.wait_for_url(f"**/rooms/{room_id}?autojoin=1")

            async def caller_in_room() -> bool:
                async with http.get(f"{hub.url}/api/rooms/{room_id}", headers=auth(county)) as r:
                    room = await r.json()
                return any(p["user"] == "term-shangzhai" for p in room["participants"])

            async with asyncio.timeout(20):
                while not await caller_in_room():
                    await asyncio.sleep(0.3)
        finally:
            for page in (*consoles, home):
                await page.context.close()


async def test_convened_site_sees_the_invitation_and_the_roll_call_follows(hub: HubProcess):
    county = hub.token("op-guinan", "guinan", "operator")
    terminal = hub.token("term-rianxiuma", "rianxiuma", "terminal")
    async with chromium() as browser:
        console, home = await new_page(browser), await new_page(browser)
        try:
            await console.goto(f"{hub.url}/console?token={county}")
            await home.goto(f"{hub.url}/?token={terminal}")
            await expect(home.locator(".help-call")).to_be_visible()

            # Tick one village on the tree (found by search) and convene it.
            await console.fill("#search", "日安秀麻")
            await console.locator('.node-check[data-check="rianxiuma"]').check()
            await console.fill("#dispatch .dispatch-title", "防汛会商")
            await console.locator("#dispatch .dispatch-convene").click()
            roll = console.locator("#dispatch .rollcall-count")
            await expect(roll).to_have_text("点名：已到 0/1")

            # The village's home page shows the invitation live; one click leads into the room.
            invitation = home.locator(".invitation", has_text="防汛会商")
            await expect(invitation).to_be_visible()
            await expect(invitation).to_contain_text("贵南县")  # the convener's site, above the village's own tree
            await invitation.locator(".invitation-join").click()
            await expect(home.locator("#prejoin")).to_be_visible()
            await home.fill("#name", "日安秀麻村值守")
            await home.click("#join")
            await expect(home.locator("#room")).to_be_visible()

            # The roll call follows without a reload.
            await expect(roll).to_have_text("点名：已到 1/1")
            row = console.locator('#dispatch .rollcall li[data-site-id="rianxiuma"]')
            await expect(row).to_contain_text("已加入")
            await expect(row).to_contain_text("日安秀麻村值守")
        finally:
            for page in (console, home):
                await page.context.close()
