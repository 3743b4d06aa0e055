"""Statistics from a known set of cases: success and escalation rates by
level, the branch and period filters, jurisdiction, and the CSV (UTF-8 with a
byte order mark) carrying the same numbers as the JSON."""

from __future__ import annotations

import asyncio
import csv
import io
import time
from typing import Any

import aiohttp

from .conftest import HubProcess
from .recording_helpers import auth

# The yushu branch: chenduo county > qingshuihe township > xiazhai, zhaduo villages.
COUNTY, TOWNSHIP = "chenduo", "qingshuihe"
PARTIES = [{"name": "扎西"}]


async def _call(http: aiohttp.ClientSession, method: str, url: str, token: str, **kw: Any) -> Any:
    async with http.request(method, url, headers=auth(token), **kw) as r:
        assert r.status in (200, 201), await r.text()
        return await r.json()


async def _walk(http: aiohttp.ClientSession, hub: HubProcess, token: str, site: str, *steps: str) -> str:
    """Open a case at `site` and take it through `steps`: statuses, or "up" to escalate."""
    body = {"site_id": site, "title": f"案件 {site} {'-'.join(steps)}", "dispute_type": "family", "parties": PARTIES}
    case = await _call(http, "POST", f"{hub.url}/api/cases", token, json=body)
    url = f"{hub.url}/api/cases/{case['id']}"
    for step in steps:
        if step == "up":
            await _call(http, "POST", f"{url}/escalate", token, json={})
        else:
            await _call(http, "PATCH", url, token, json={"status": step})
    return case["id"]


async def test_rates_from_known_cases_and_the_csv_agrees(hub: HubProcess, http: aiohttp.ClientSession):
    started = time.time()
    county = hub.sign("op-chenduo", COUNTY, "operator")
    await _walk(http, hub, county, "xiazhai", "mediating", "agreement")  # A: village, agreement
    await _walk(http, hub, county, "xiazhai", "mediating", "failed")  # B: village, failed
    await _walk(http, hub, county, "xiazhai", "up", "mediating", "agreement")  # C: township, agreement
    await _walk(http, hub, county, "zhaduo", "up", "up", "mediating", "failed", "closed")  # D: county, failed
    await _walk(http, hub, county, "zhaduo")  # E: village, open
    await _walk(http, hub, county, TOWNSHIP, "mediating", "agreement", "closed")  # F: township, agreement
    # A training for the county's branch, attended from both villages.
    body = {"title": "调解技巧", "branch": COUNTY}
    training = await _call(http, "POST", f"{hub.url}/api/trainings", county, json=body)
    for village in ("xiazhai", "zhaduo"):
        attendee = hub.sign(f"t-{village}", village, "terminal")
        async with http.ws_connect(f"{hub.url}/ws?token={attendee}") as ws:
            await ws.send_json({"type": "join", "room": training["room_id"]})
            while (await ws.receive_json(timeout=10))["type"] != "joined":
                pass
            await asyncio.sleep(0.2)
            await ws.send_json({"type": "leave", "room": training["room_id"]})
            while (await ws.receive_json(timeout=10))["type"] != "left":
                pass
    period = {"from": str(started - 1), "to": str(time.time() + 1)}

    stats = await _call(http, "GET", f"{hub.url}/api/stats", county, params=period)
    assert stats["site"] == COUNTY
    totals = stats["totals"]
    assert (totals["cases"], totals["agreement"], totals["failed"], totals["concluded"]) == (6, 3, 2, 5)
    assert totals["success_rate"] == 0.6  # agreement 3 / concluded 5
    assert totals["escalated"] == 2 and totals["escalation_rate"] == round(2 / 6, 4)
    assert stats["by_status"] == {
        "open": 1,
        "mediating": 0,
        "agreement": 2,
        "failed": 1,
        "escalated": 0,
        "closed": 2,
    }
    assert stats["by_type"]["family"] == 6
    levels = {row["level"]: row for row in stats["by_level"]}
    expected = {
        # level: (cases now there, agreement, failed, success, handled there, escalated from there, rate)
        "village": (3, 1, 1, 0.5, 5, 2, 0.4),
        "township": (2, 2, 0, 1.0, 3, 1, round(1 / 3, 4)),
        "county": (1, 0, 1, 0.0, 1, 0, 0.0),
        "prefecture": (0, 0, 0, None, 0, 0, None),
    }
    for level, numbers in expected.items():
        row = levels[level]
        keys = ("cases", "agreement", "failed", "success_rate", "handled", "escalated", "escalation_rate")
        assert tuple(row[k] for k in keys) == numbers, level
    assert levels["village"]["by_status"]["open"] == 1 and levels["county"]["by_status"]["closed"] == 1
    assert stats["definitions"]["success_rate"] and stats["definitions"]["escalation_rate"]
    attended = {row["site_id"]: row for row in stats["training"]}
    assert set(attended) == {"xiazhai", "zhaduo"}
    assert all(row["trainings"] == 1 and row["people"] == 1 and row["minutes"] < 1 for row in attended.values())

    # The same numbers as CSV.
    async with http.get(f"{hub.url}/api/stats.csv", params=period, headers=auth(county)) as r:
        assert r.status == 200 and r.content_type == "text/csv"
        assert "attachment" in r.headers["Content-Disposition"]
        raw = await r.read()
    assert raw.startswith(b"\xef\xbb\xbf")  # Excel needs the BOM to read UTF-8
    rows = list(csv.DictReader(io.StringIO(raw.decode("utf-8-sig"))))
    assert list(rows[0]) == ["section", "item", "metric", "value"]
    cells = {(r["section"], r["item"], r["metric"]): r["value"] for r in rows}
    assert float(cells[("total", "all", "success_rate")]) == totals["success_rate"]
    assert int(cells[("total", "all", "cases")]) == 6
    for level, row in levels.items():
        for metric in ("cases", "handled", "escalated", "agreement", "failed"):
            assert int(cells[("level", level, metric)]) == row[metric]
        for metric in ("success_rate", "escalation_rate"):
            value = cells[("level", level, metric)]
            assert (float(value) if value else None) == row[metric]
    for status, n in stats["by_status"].items():
        assert int(cells[("status", status, "cases")]) == n
    for site, row in attended.items():
        assert int(cells[("training", site, "people")]) == row["people"]
        assert float(cells[("training", site, "minutes")]) == row["minutes"]

    # A branch: only the cases that have been at its sites.
    village = await _call(http, "GET", f"{hub.url}/api/stats", county, params=period | {"site": "xiazhai"})
    assert (village["totals"]["cases"], village["totals"]["success_rate"]) == (3, round(2 / 3, 4))
    # A period after them: nothing.
    later = {"from": str(time.time() + 10), "to": str(time.time() + 20)}
    empty = await _call(http, "GET", f"{hub.url}/api/stats", county, params=later)
    assert empty["totals"]["cases"] == 0 and empty["totals"]["success_rate"] is None


async def test_statistics_follow_jurisdiction_and_reject_bad_periods(hub: HubProcess, http: aiohttp.ClientSession):
    outsider = hub.sign("m-chengtai", "chengtai", "mediator")
    terminal = hub.sign("t-chenduo", COUNTY, "terminal")
    for caller, params, status in [
        (outsider, {"site": COUNTY}, 403),
        (terminal, {}, 403),
        (outsider, {"site": "nowhere"}, 404),
        (outsider, {"from": "yesterday"}, 400),
        (outsider, {"from": "2026-02-01", "to": "2026-01-01"}, 400),
    ]:
        for path in ("/api/stats", "/api/stats.csv"):
            async with http.get(f"{hub.url}{path}", params=params, headers=auth(caller)) as r:
                assert r.status == status, (path, params, await r.text())
