"""Retention: recordings older than the configured number of days go."""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from pathlib import Path

from .catalogue import Catalogue
from .service import held_here

log = logging.getLogger(__name__)
DAY = 86400.0


async def expire(
    catalogue: Catalogue, root: Path, days: float, now: float | None = None, node_url: str = ""
) -> list[str]:
    """Delete the media, manifest and catalogue entry of every finished
    recording that started more than `days` ago; returns their ids.
    Audit rows stay: who watched a recording outlives the recording.
    Recordings another machine holds are left to that machine (`node_url`:
    this process's), so that none loses its catalogue row but keeps its files."""
    cutoff = (time.time() if now is None else now) - days * DAY
    deleted = []
    for row in await catalogue.older_than(cutoff):
        if not held_here(root, node_url, row):
            continue
        await asyncio.to_thread(shutil.rmtree, root / row["id"], ignore_errors=True)
        await catalogue.delete(row["id"])
        log.info("retention: deleted recording %s of room %s (older than %g days)", row["id"], row["room_id"], days)
        deleted.append(row["id"])
    return deleted


async def expire_forever(catalogue: Catalogue, root: Path, days: float, period: float, node_url: str) -> None:
    while True:
        try:
            await expire(catalogue, root, days, node_url=node_url)
        except Exception:  # keep the schedule; the next sweep retries
            log.exception("retention sweep failed")
        await asyncio.sleep(period)
