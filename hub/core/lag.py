"""How late the event loop runs: the loop that forwards every packet must
never wait on a disk, a database or a long computation.

A probe task sleeps `period` seconds again and again; whatever it wakes up
later than asked is time the loop spent on something else without yielding.
"""

from __future__ import annotations

import asyncio

from hub.core.tasks import cancel_and_wait

#: Seconds between wake-ups: short enough to catch a 50 ms stall at once.
PERIOD = 0.010


class LagProbe:
    """`start()` in the running loop; `max_ms` is the worst lag since then,
    `last_ms` the latest wake-up's."""

    def __init__(self, period: float = PERIOD) -> None:
        self.period = period
        self.max_ms = 0.0
        self.last_ms = 0.0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        await cancel_and_wait(self._task)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            asked = loop.time() + self.period
            await asyncio.sleep(self.period)
            self.last_ms = max(0.0, (loop.time() - asked) * 1000)
            self.max_ms = max(self.max_ms, self.last_ms)
