"""Stopping background tasks."""

from __future__ import annotations

import asyncio
from typing import Any


async def cancel_and_wait(*tasks: asyncio.Task[Any] | None) -> None:
    """Cancel tasks and wait until they have finished.

    `with suppress(CancelledError): await task` would also swallow a
    cancellation aimed at the caller while it waits, and a caller that
    loops (an event follower stopping a stream's monitor) then never stops:
    the hub hung at shutdown that way. `asyncio.wait` lets it through."""
    pending = [t for t in tasks if t is not None]
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending)
