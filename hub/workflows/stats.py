"""Statistics of a branch of the tree over a period: cases by level, status
and outcome, success and escalation rates, training attendance by site.

Definitions (also sent with every answer, and shown on the page):
- The cases counted are those opened in [since, until) at a site of the branch.
- A case's level is the level of the site holding it now (where it was
  last worked; a concluded case stays where it concluded).
- Concluded: the case reached agreement or failed (and may since be closed);
  a case withdrawn without either, or still being worked, is not concluded.
- Success rate = cases that reached agreement / concluded cases; the seed's
  "success rate" of mediation. None when nothing concluded.
- Escalation rate of a level = cases escalated from a site of that level /
  cases that were at a site of that level (each case counted once per level).
- Referrals by department kind: every referral of the cases counted, by the
  kind of department it went to and its answer (accepted, declined, or still
  pending); a case referred twice counts twice.
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from hub.core.sites import DEPARTMENT_KINDS, LEVELS, SiteTree
from hub.core.store import Database
from hub.workflows.cases import DECISIONS, DISPUTE_TYPES, RESULTS, STATUSES, Cases

DEFINITIONS = {
    "period": "cases opened in [from, to) at a site of the branch",
    "level": "level of the site that holds the case now",
    "concluded": "cases that reached agreement or failed (closed ones keep their result)",
    "success_rate": "cases that reached agreement / concluded cases",
    "escalation_rate": "cases escalated from a site of the level / cases that were at a site of the level",
    "referrals": "referrals of the counted cases by department kind and answer (pending: not answered yet)",
}
#: A referral's outcome in the statistics: its decision, or pending.
REFERRAL_OUTCOMES = (*DECISIONS, "pending")

#: hub/workflows/training.py's attendance_by_site(db, since, until) -> [{site_id, trainings, people, minutes}]
Attendance = Callable[[Database, float, float], Awaitable[list[dict[str, Any]]]]


def _rate(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _levels_visited(tree: SiteTree, case: dict[str, Any]) -> set[str]:
    """Levels of the sites the case has been at: its origin and every site it was escalated to."""
    sites = {case["origin_site_id"], case["site_id"]}
    sites |= {h["to_site"] for h in case["history"] if h["action"] == "escalated"}
    return {site.level for s in sites if (site := tree.get(s)) is not None}


async def compute(
    cases: Cases,
    branch: str,
    since: float,
    until: float,
    db: Database,
    attendance: Attendance | None = None,
) -> dict[str, Any]:
    tree = cases.tree
    sites = [s.id for s in tree.jurisdiction(branch)]
    rows = await cases.in_period(sites, since, until)

    def level_of(site_id: str) -> str:
        site = tree.get(site_id)
        return site.level if site else "unknown"

    by_status = Counter(c["status"] for c in rows)
    by_type = Counter(c["dispute_type"] for c in rows)
    by_level = []
    for level in LEVELS:
        here = [c for c in rows if level_of(c["site_id"]) == level]
        visited = [c for c in rows if level in _levels_visited(tree, c)]
        escalated = sum(
            1
            for c in visited
            if any(h["action"] == "escalated" and level_of(h["from_site"]) == level for h in c["history"])
        )
        agreement = sum(1 for c in here if c["result"] == "agreement")
        concluded = sum(1 for c in here if c["result"] in RESULTS)
        by_level.append(
            {
                "level": level,
                "cases": len(here),
                "by_status": {s: sum(1 for c in here if c["status"] == s) for s in STATUSES},
                "agreement": agreement,
                "failed": concluded - agreement,
                "concluded": concluded,
                "success_rate": _rate(agreement, concluded),
                "handled": len(visited),
                "escalated": escalated,
                "escalation_rate": _rate(escalated, len(visited)),
            }
        )
    agreement = sum(1 for c in rows if c["result"] == "agreement")
    concluded = sum(1 for c in rows if c["result"] in RESULTS)
    ever_escalated = sum(1 for c in rows if any(h["action"] == "escalated" for h in c["history"]))
    referrals = Counter((r["department_kind"], r["decision"] or "pending") for c in rows for r in c["referrals"])
    by_referral = [
        {"kind": kind, "referrals": sum(referrals[(kind, o)] for o in REFERRAL_OUTCOMES)}
        | {outcome: referrals[(kind, outcome)] for outcome in REFERRAL_OUTCOMES}
        for kind in DEPARTMENT_KINDS
    ]
    training = None
    if attendance is not None:
        in_branch = set(sites)
        training = [
            row | {"site_name": site.name, "site_name_en": site.name_en}
            for row in await attendance(db, since, until)
            if row["site_id"] in in_branch and (site := tree.get(row["site_id"])) is not None
        ]
    return {
        "site": branch,
        "from": since,
        "to": until,
        "definitions": DEFINITIONS,
        "totals": {
            "cases": len(rows),
            "agreement": agreement,
            "failed": concluded - agreement,
            "concluded": concluded,
            "success_rate": _rate(agreement, concluded),
            "escalated": ever_escalated,
            "escalation_rate": _rate(ever_escalated, len(rows)),
        },
        "by_status": {s: by_status.get(s, 0) for s in STATUSES},
        "by_type": {t: by_type.get(t, 0) for t in DISPUTE_TYPES},
        "by_level": by_level,
        "by_referral": by_referral,
        "training": training,
    }


def to_csv(stats: dict[str, Any]) -> str:
    """One long table (section, item, metric, value) with a header row: every
    number of the JSON answer, easy to pivot in a spreadsheet."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(["section", "item", "metric", "value"])
    writer.writerow(["period", stats["site"], "from", stats["from"]])
    writer.writerow(["period", stats["site"], "to", stats["to"]])
    for metric, value in stats["totals"].items():
        writer.writerow(["total", "all", metric, _cell(value)])
    for status, n in stats["by_status"].items():
        writer.writerow(["status", status, "cases", n])
    for kind, n in stats["by_type"].items():
        writer.writerow(["dispute_type", kind, "cases", n])
    for row in stats["by_level"]:
        for metric, value in row.items():
            if metric == "level":
                continue
            if metric == "by_status":
                for status, n in value.items():
                    writer.writerow(["level", row["level"], f"status_{status}", n])
            else:
                writer.writerow(["level", row["level"], metric, _cell(value)])
    for row in stats["by_referral"]:
        for metric in ("referrals", *REFERRAL_OUTCOMES):
            writer.writerow(["referral", row["kind"], metric, row[metric]])
    for row in stats["training"] or ():
        for metric in ("trainings", "people", "minutes"):
            writer.writerow(["training", row["site_id"], metric, row[metric]])
    return out.getvalue()


def _cell(value: Any) -> Any:
    return "" if value is None else value
