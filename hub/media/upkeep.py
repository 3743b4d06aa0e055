"""One timer per event loop for every viewer's periodic upkeep.

On this VM each wake-up of a sleeping process costs ~36 µs of CPU by itself
(README, "Benchmarks"). A timer per viewer - a VP8 viewer's temporal filter
and a simulcast viewer's layer switch re-decide every `TICK`, each sink
sends a sender report every few seconds, aioice checks each connection's
consent every 4-6 s - wakes the hub once per viewer per period, unless the
wake-up happens to coincide with other work. The `Ticker` wakes it once a
`TICK` for all of them: periodic callbacks run at every tick, and `sleep`
ends at the first tick at or after its delay, so a randomized interval
(RFC 3550's sender reports, RFC 7675's consent) stays randomized to the
tick's resolution.

The ticks sit on a grid of the loop's clock with a random phase per event
loop (per process, in the hub): two hubs on one machine do not tick
together, and a process's reports stay spread over its viewers' own random
due times on that grid. The timer runs only while something waits for it.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import random
from collections.abc import Callable

log = logging.getLogger(__name__)

#: Seconds between ticks: the layer switch's and temporal filter's period.
TICK = 0.5


class Periodic:
    """A callback run at every tick until `cancel`led."""

    __slots__ = ("callback", "cancelled")

    def __init__(self, callback: Callable[[], None]) -> None:
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class Ticker:
    """The shared timer of one event loop (`ticker()` gives it)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, period: float = TICK) -> None:
        self.period = period
        self.ticks = 0
        self._loop = loop
        self._phase = random.random() * period
        self._periodic: list[Periodic] = []
        #: (due, order, future) of the sleeps, earliest first.
        self._sleeps: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()
        self._handle: asyncio.TimerHandle | None = None

    def every(self, callback: Callable[[], None]) -> Periodic:
        """Run `callback` at every tick from the next one on."""
        periodic = Periodic(callback)
        self._periodic.append(periodic)
        self._arm()
        return periodic

    async def sleep(self, delay: float) -> None:
        """Wait until the first tick at or after `delay` seconds from now."""
        future = self._loop.create_future()
        heapq.heappush(self._sleeps, (self._loop.time() + delay, next(self._order), future))
        self._arm()
        await future

    def _next_tick(self) -> float:
        now = self._loop.time()
        return now + self.period - (now - self._phase) % self.period

    def _arm(self) -> None:
        if self._handle is None:
            self._handle = self._loop.call_at(self._next_tick(), self._tick)

    def _tick(self) -> None:
        self._handle = None
        self.ticks += 1
        # A little early counts: call_at may fire a hair before the grid point.
        now = self._loop.time() + 1e-3
        sleeps = self._sleeps
        while sleeps and sleeps[0][0] <= now:
            future = heapq.heappop(sleeps)[2]
            if not future.done():  # a cancelled waiter
                future.set_result(None)
        self._periodic = [p for p in self._periodic if not p.cancelled]
        for periodic in tuple(self._periodic):
            if periodic.cancelled:  # by an earlier callback of this tick
                continue
            try:
                periodic.callback()
            except Exception:  # one viewer's failure is its own; the others still tick
                log.exception("a periodic upkeep callback failed")
        if self._periodic or self._sleeps:
            self._arm()


#: Where a loop keeps its ticker: on the loop itself, so that the two (and
#: the timer handle between them) go together when the loop is dropped.
_ATTRIBUTE = "_hub_ticker"


def ticker() -> Ticker:
    """The running event loop's ticker."""
    loop = asyncio.get_running_loop()
    found: Ticker | None = getattr(loop, _ATTRIBUTE, None)
    if found is None:
        found = Ticker(loop)
        setattr(loop, _ATTRIBUTE, found)
    return found
