"""Keeping event sockets alive, and finding the dead ones, from one task.

aiohttp's own heartbeat gives every socket a timer, a ping task and a pong
timer per beat: with 5,000 sockets held open that was most of an idle hub's
CPU (timer churn, and the garbage collector walking what it leaves). Here one
task visits the sockets in turns, a slice of them a second, each socket every
half `interval`:

- a socket heard from (any frame, pongs included) since the last visit is
  left alone; one silent for half an interval or more is sent a ping, so a
  silent but healthy socket sees one ping per `interval`;
- a socket pinged at the last visit and silent ever since is dropped (its
  connection aborted: a peer that answers nothing is not told why), between
  one and one and a half intervals after it last said anything.

A socket whose send buffer is not empty is not pinged: the send-stall limit
(HUB_WS_SEND_STALL_SECONDS) already watches a client that does not read.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Protocol

from hub.core.tasks import cancel_and_wait

log = logging.getLogger(__name__)

#: About how often the task wakes (seconds): each wake visits one slice.
WAKE = 1.0


class Beating(Protocol):
    """What the heartbeat needs of a socket."""

    heard_at: float
    pinged_at: float | None

    def unsent(self) -> int | None:
        """Bytes waiting in the send buffer; None once the connection is gone."""

    async def ping(self) -> None: ...

    def abort(self, reason: str) -> None: ...


class Heartbeat:
    def __init__(self, interval: float) -> None:
        self.period = interval / 2
        count = max(1, round(self.period / WAKE))
        self._slices: list[set[Beating]] = [set() for _ in range(count)]
        self._next = 0
        self._where: dict[Beating, int] = {}
        self._task: asyncio.Task[None] | None = None

    def add(self, socket: Beating) -> None:
        self._where[socket] = self._next
        self._slices[self._next].add(socket)
        self._next = (self._next + 1) % len(self._slices)

    def discard(self, socket: Beating) -> None:
        where = self._where.pop(socket, None)
        if where is not None:
            self._slices[where].discard(socket)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        await cancel_and_wait(self._task)

    async def _run(self) -> None:
        tick = self.period / len(self._slices)
        turn = 0
        while True:
            await asyncio.sleep(tick)
            try:
                await self.visit(self._slices[turn])
            except Exception:
                log.exception("event socket heartbeat failed; it goes on with the next slice")
            turn = (turn + 1) % len(self._slices)

    async def visit(self, sockets: set[Beating]) -> None:
        now = time.monotonic()
        for socket in tuple(sockets):
            if socket.pinged_at is not None and socket.heard_at < socket.pinged_at:
                socket.abort(f"no answer to a ping for {now - socket.pinged_at:.0f} s")
                self.discard(socket)
                continue
            socket.pinged_at = None
            if now - socket.heard_at >= self.period and socket.unsent() == 0:
                socket.pinged_at = now
                await socket.ping()
