"""How late the event loop runs: the loop that forwards every packet must
never wait on a disk, a database or a long computation.

A probe task sleeps `period` seconds again and again; whatever it wakes up
later than asked is time the loop spent on something else without yielding
(its own lag), or time the operating system kept the loop's thread waiting
for a CPU (the machine's load, which no code of the hub causes or cures).
Linux counts the latter per thread (`/proc/thread-self/schedstat`, the
run-queue wait), so the probe tells them apart where it can.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from hub.core.tasks import cancel_and_wait

#: Seconds between wake-ups: short enough to catch a 50 ms stall at once.
PERIOD = 0.010
SCHEDSTAT = Path("/proc/thread-self/schedstat")


def _run_queue_seconds() -> float:
    """Seconds this thread has waited runnable for a CPU; 0 where unknown."""
    try:
        return int(SCHEDSTAT.read_text().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


class LagProbe:
    """`start()` in the running loop. `last_ms` is the latest wake-up's lag
    caused inside the process (overshoot less run-queue wait), `max_ms` the
    worst since start; `wall_max_ms` the worst overshoot as a clock sees it."""

    def __init__(self, period: float = PERIOD) -> None:
        self.period = period
        self.max_ms = 0.0
        self.last_ms = 0.0
        self.wall_max_ms = 0.0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        await cancel_and_wait(self._task)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            asked, waited = loop.time() + self.period, _run_queue_seconds()
            await asyncio.sleep(self.period)
            wall = max(0.0, loop.time() - asked)
            self.last_ms = max(0.0, wall - (_run_queue_seconds() - waited)) * 1000
            self.max_ms = max(self.max_ms, self.last_ms)
            self.wall_max_ms = max(self.wall_max_ms, wall * 1000)
