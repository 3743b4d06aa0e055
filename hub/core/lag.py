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
import contextlib
import os

from hub.core.tasks import cancel_and_wait

#: Seconds between wake-ups: short enough to catch a 50 ms stall at once.
PERIOD = 0.010
SCHEDSTAT = "/proc/thread-self/schedstat"


class _RunQueue:
    """Seconds this thread has waited runnable for a CPU; 0 where unknown.
    The file stays open and is re-read in place (one pread, no open/close):
    the probe reads it 100 times a second."""

    def __init__(self) -> None:
        self._fd: int | None = None
        with contextlib.suppress(OSError):
            self._fd = os.open(SCHEDSTAT, os.O_RDONLY)  # the calling thread's: open it in the loop's

    def seconds(self) -> float:
        if self._fd is None:
            return 0.0
        try:
            return int(os.pread(self._fd, 128, 0).split()[1]) / 1e9
        except (OSError, IndexError, ValueError):
            return 0.0

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


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
        run_queue = _RunQueue()
        try:
            # One clock and one run-queue reading per wake-up: each wake-up's
            # readings are the next sleep's starting point (the few
            # microseconds between them are the probe's own).
            asked, waited = loop.time() + self.period, run_queue.seconds()
            while True:
                await asyncio.sleep(self.period)
                now, queued = loop.time(), run_queue.seconds()
                wall = max(0.0, now - asked)
                self.last_ms = max(0.0, wall - (queued - waited)) * 1000
                self.max_ms = max(self.max_ms, self.last_ms)
                self.wall_max_ms = max(self.wall_max_ms, wall * 1000)
                asked, waited = now + self.period, queued
        finally:
            run_queue.close()
