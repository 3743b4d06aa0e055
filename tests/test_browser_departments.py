"""A department in real browsers: a township mediator invites the township's
police station into a mediation room; the station's officer, on the home
page, sees the invitation without reloading and joins with one click; the
roster names the station; the township's console shows it online."""

from __future__ import annotations

from collections.abc import Iterator

import aiohttp
import pytest
from playwright.async_api import Browser, expect

from hub.config import Settings
from hub.core.tokens import Claims, issue

from .conftest import HubProcess, start_hub
from .test_browser_room import join, new_page, tile_of

TOWNSHIP, POLICE = "guomaying", "guomaying-police"


@pytest.fixture(scope="module")
def dept_room_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubProcess]:
    process = start_hub(tmp_path_factory.mktemp("dept-room-hub"))
    yield process
    process.stop()


async def test_a_mediator_invites_the_police_station_and_it_joins(dept_room_hub: HubProcess, browser: Browser) -> None:
    hub = dept_room_hub
    mediator = hub.sign("med-guomaying", TOWNSHIP, "mediator")
    operator = hub.sign("op-guomaying", TOWNSHIP, "operator")
    officer = issue(
        Settings(data=hub.data).keys(),
        Claims(user="pcs-wang", site=POLICE, role="mediator", name="王警官", department=POLICE),
    )
    async with aiohttp.ClientSession() as http:
        body = {"site_id": TOWNSHIP, "kind": "mediation", "title": "酒后滋事纠纷"}
        async with http.post(f"{hub.url}/api/rooms", json=body, headers={"Authorization": f"Bearer {mediator}"}) as r:
            assert r.status == 201
            room_id = (await r.json())["id"]

    home = await new_page(browser)
    room = await new_page(browser)
    console = await new_page(browser)
    try:
        await home.goto(f"{hub.url}/?token={officer}")
        await expect(home.locator(".tree-department")).to_contain_text("过马营镇派出所")
        await expect(home.locator(".invitation")).to_have_count(0)
        # Statistics are the sites' (403 for a department): no link to them.
        await expect(home.locator('#nav a[data-page="cases"]')).to_have_count(1)
        await expect(home.locator('#nav a[data-page="stats"]')).to_have_count(0)

        # The console beside the township shows the station online (its officer's page is open).
        await console.goto(f"{hub.url}/console?token={operator}")
        station = console.locator(f'.department[data-department-id="{POLICE}"]')
        await expect(station).to_have_attribute("data-online", "true")
        await expect(console.locator('.department[data-department-id="guomaying-tribunal"]')).to_have_attribute(
            "data-online", "false"
        )

        await join(room, f"{hub.url}/rooms/{room_id}?token={mediator}", "李明")
        await room.click("#tab-invite")
        offered = room.locator(f'#department-list [data-department-id="{POLICE}"]')
        await expect(offered.locator(".name")).to_have_text("过马营镇派出所")
        await offered.locator("button").click()
        await expect(offered.locator("button")).to_have_text("已邀请")

        # The officer's home page shows it without reloading; one click leads in.
        invitation = home.locator(".invitation")
        await expect(invitation).to_have_count(1)
        await expect(invitation).to_contain_text("李明")
        await invitation.locator(".invitation-join").click()
        await expect(home).to_have_url(f"{hub.url}/rooms/{room_id}")
        await expect(home.locator("#prejoin")).to_be_visible()
        await home.wait_for_function("() => document.querySelector('#preview').videoWidth > 0")
        await home.click("#join")
        await expect(home.locator("#room")).to_be_visible()

        # The roster names the department; each sees the other's camera.
        await room.click(".side-tab[data-panel=people]")
        person = room.locator("#people .person", has_text="王警官")
        await expect(person.locator(".person-site")).to_contain_text("过马营镇派出所")
        await expect(tile_of(room, "王警官").locator(".tile-site")).to_have_text("过马营镇派出所")
        await expect(tile_of(home, "李明").locator(".tile-site")).to_have_text("过马营镇")
    finally:
        for page in (home, room, console):
            await page.context.close()


async def test_a_case_is_referred_and_answered_on_the_cases_page(dept_room_hub: HubProcess, browser: Browser) -> None:
    hub = dept_room_hub
    village = hub.sign("med-shangzhai", "shangzhai", "mediator")
    judge = issue(
        Settings(data=hub.data).keys(),
        Claims(user="fy-zhao", site="guinan-court", role="mediator", name="赵法官", department="guinan-court"),
    )
    case = {"title": "赡养纠纷", "dispute_type": "family", "parties": [{"name": "卓玛"}]}
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{hub.url}/api/cases", json=case, headers={"Authorization": f"Bearer {village}"}) as r:
            assert r.status == 201
            case_id = (await r.json())["id"]

    mediator = await new_page(browser)
    court = await new_page(browser)
    try:
        await court.goto(f"{hub.url}/cases?token={judge}")
        await court.wait_for_function("() => document.body.dataset.ready === '1'")
        await expect(court.locator("#new-case")).to_be_hidden()
        await expect(court.locator("#case-rows tr")).to_have_count(0)

        await mediator.goto(f"{hub.url}/cases?token={village}&case={case_id}")
        await mediator.select_option("#refer-department", "guinan-court")
        await mediator.select_option("#refer-ask", "judicial_confirmation")
        await mediator.fill("#refer-note", "申请司法确认")
        await mediator.click("#refer")
        referral = mediator.locator("#case-referrals .case-referral")
        await expect(referral).to_contain_text("贵南县人民法院")
        await expect(referral).to_have_attribute("data-decision", "pending")

        # The court sees it arrive live, reads it and answers.
        await expect(court.locator("#banner")).to_have_attribute("data-error", "case.referredHere")
        await court.locator(f"#case-rows tr[data-case-id='{case_id}']").click()
        await court.select_option("#answer-decision", "accepted")
        await court.fill("#answer-outcome", "确认调解协议有效")
        await court.fill("#answer-document", "(2026)青2525民特2号")
        await court.click("#answer")
        await expect(court.locator("#case-referrals .case-referral")).to_have_attribute("data-decision", "accepted")
        answered = court.locator("#case-history li[data-action='referral-answered']")
        await expect(answered).to_contain_text("贵南县人民法院")
        # The mediator's page follows live.
        await expect(referral).to_have_attribute("data-decision", "accepted")
        await expect(referral).to_contain_text("(2026)青2525民特2号")
    finally:
        for page in (mediator, court):
            await page.context.close()
