"""Requests start their handlers a few per turn of the event loop.

The loop that answers HTTP also forwards every packet. A burst of requests
arriving together (a console opening a hundred cases at once) would
otherwise all run their handlers' first steps - parsing, validation, checks
of reach - in one turn, and every packet waiting on the loop would wait for
all of them. Paced, each turn starts at most `per_turn` handlers; the rest
start in the next turns, in the order they came, with the loop's sockets
and timers served in between. A request is only ever delayed, never refused.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable

from aiohttp import web

#: Handler starts per turn of the loop: a handler's first step costs about
#: 0.4-0.8 ms on this project's machine, so a turn spends a few ms on them.
PER_TURN = 8

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Pacer:
    """`await turn()` before a handler starts. Counts starts per turn: the
    count goes back to zero in the next turn (a `call_soon` callback), which
    also lets the next `per_turn` waiters go."""

    def __init__(self, per_turn: int = PER_TURN) -> None:
        if per_turn < 1:
            raise ValueError("a pacer lets at least one request start per turn")
        self.per_turn = per_turn
        self._started = 0
        self._waiting: deque[asyncio.Future[None]] = deque()
        self._next_turn: asyncio.Handle | None = None

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    async def turn(self) -> None:
        if not self._waiting and self._started < self.per_turn:
            self._started += 1
            self._watch_turns()
            return
        future = asyncio.get_running_loop().create_future()
        self._waiting.append(future)
        self._watch_turns()
        await future  # a client gone while it waits leaves a cancelled future, passed over

    def _watch_turns(self) -> None:
        if self._next_turn is None:
            self._next_turn = asyncio.get_running_loop().call_soon(self._new_turn)

    def _new_turn(self) -> None:
        self._next_turn = None
        self._started = 0
        while self._waiting and self._started < self.per_turn:
            self._release()
        if self._started:
            self._watch_turns()

    def _release(self) -> None:
        while self._waiting:
            future = self._waiting.popleft()
            if not future.done():
                future.set_result(None)
                self._started += 1
                return


def pacing_middleware(pacer: Pacer) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    @web.middleware
    async def paced(request: web.Request, handler: Handler) -> web.StreamResponse:
        await pacer.turn()
        return await handler(request)

    return paced
