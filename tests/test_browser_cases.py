"""Cases in real browsers: a village mediator opens a case, holds a session in
its mediation room and escalates it; the township's mediator, on the cases
page in another browser context, sees it arrive without reloading; the
statistics page counts it."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from playwright.async_api import Page, expect

from tests.browser import chromium, screen_text

from .conftest import HubProcess, start_hub

CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")

expect.set_options(timeout=20_000)


@pytest.fixture(scope="module")
def cases_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubProcess]:
    process = start_hub(tmp_path_factory.mktemp("cases-browser"))
    yield process
    process.stop()


async def open_page(browser, url: str) -> Page:  # type: ignore[no-untyped-def]
    context = await browser.new_context(viewport={"width": 1440, "height": 900})
    page = await context.new_page()
    page.on("pageerror", lambda e: print(f"[browser pageerror] {e}"))
    await page.goto(url)
    await page.wait_for_selector("body[data-ready='1']")
    return page


async def test_case_opened_held_escalated_arrives_live_and_is_counted(cases_hub: HubProcess):
    hub = cases_hub
    village = hub.sign("m-qutancun", "qutancun", "mediator")
    township = hub.sign("m-qutan", "qutan", "mediator")
    async with chromium() as browser:
        upper = await open_page(browser, f"{hub.url}/cases?token={township}")
        await expect(upper.locator("#cases-empty")).to_be_visible()
        await upper.evaluate("window.notReloaded = true")

        # The village mediator opens a case ...
        lower = await open_page(browser, f"{hub.url}/cases?token={village}")
        await lower.click("#new-case")
        await lower.fill("#c-title", "草场边界纠纷")
        await lower.select_option("#c-type", "land")
        await lower.locator(".case-party .p-name").first.fill("才让")
        await lower.locator(".case-party .p-phone").first.fill("13800000000")
        await lower.fill("#c-summary", "两户牧民对草场边界有争议")
        await lower.click("#case-form button[type=submit]")
        detail = lower.locator("#case-detail")
        await expect(detail).to_have_attribute("data-status", "open")
        case_id = await detail.get_attribute("data-case-id")

        # ... holds a session: the mediation room opens and they join it ...
        await lower.click("#hold-session")
        await lower.wait_for_url(re.compile(r"/rooms/room-"))
        await expect(lower.locator("#prejoin")).to_be_visible()
        await lower.click("#join")
        await expect(lower.locator(".room-tile.self")).to_be_visible()
        await lower.goto(f"{hub.url}/cases?case={case_id}")  # the token stays in the tab's sessionStorage
        await expect(detail).to_have_attribute("data-status", "mediating")
        await expect(lower.locator("#case-sessions .case-session")).to_have_count(1)

        # ... and escalates it to the township.
        await lower.fill("#escalate-note", "需镇调委会介入")
        await lower.click("#escalate")
        await expect(detail).to_have_attribute("data-status", "escalated")
        await expect(detail).to_have_attribute("data-site-id", "qutan")
        await expect(lower.locator(".case-readonly")).to_be_visible()

        # The township sees it arrive in its queue, live.
        row = upper.locator(f"#case-rows tr[data-case-id='{case_id}']")
        await expect(row).to_be_visible()
        await expect(upper.locator("#banner")).to_have_attribute("data-error", "case.arrived")
        assert await upper.evaluate("window.notReloaded") is True
        await row.click()
        await expect(upper.locator("#case-history li[data-action='escalated']")).to_contain_text("需镇调委会介入")
        await expect(upper.locator("#case-sessions .case-session[data-site-id='qutancun']")).to_be_visible()
        await expect(upper.locator("#hold-session")).to_be_visible()  # now the township's to work

        # The statistics page counts it, at the township level, escalated once from the village.
        await upper.goto(f"{hub.url}/stats")
        await upper.wait_for_selector("body[data-ready='1']")
        await expect(upper.locator("[data-metric='cases'] .stats-total-value")).to_have_text("1")
        await expect(upper.locator("[data-chart='level'] [data-item='township']")).to_contain_text("1")
        await expect(upper.locator("[data-chart='escalation'] [data-item='village']")).to_contain_text("100%")
        assert "/api/stats.csv?" in (await upper.locator("#csv").get_attribute("href") or "")
        await upper.click("#lang-toggle")
        await expect(upper.locator("[data-metric='cases']")).to_contain_text("Cases")
        assert not CJK.search(await screen_text(upper))
