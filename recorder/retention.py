"""Retention: recordings older than the configured number of days go."""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from pathlib import Path

from .catalogue import Catalogue

log = logging.getLogger(__name__)
DAY = 86400.0


async def expire(catalogue: Catalogue, root: Path, days: float, now: float | None = None) -> list[str]:
    """Delete the media, manifest and catalogue entry of every finished
    recording that started more than `days` ago; returns their ids.
    Audit rows stay: who watched a recording outlives the recording."""
    cutoff = (time.time() if now is None else now) - days * DAY
    deleted = []
    for row in await catalogue.older_than(cutoff):
        await asyncio.to_thread(shutil.rmtree, root / row["id"], ignore_errors=True)
        await catalogue.delete(row["id"])
        log.info("retention: deleted recording %s of room %s (older than %g days)", row["id"], row["room_id"], days)
        deleted.append(row["id"])
    return deleted


async def expire_forever(catalogue: Catalogue, root: Path, days: float, period: float) -> None:
    while True:
        try:
            await expire(catalogue, root, days)
        except Exception:  # keep the schedule; the next sweep retries
            log.exception("retention sweep failed")
        await asyncio.sleep(period)
