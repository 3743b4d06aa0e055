"""Requests start their handlers a few per turn of the event loop (signaling.pacing)."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from aiohttp import web

from signaling.pacing import Pacer, pacing_middleware


class Turns:
    """Counts the event loop's turns: a callback that schedules itself runs once a turn."""

    def __init__(self) -> None:
        self.count = 0
        self._loop = asyncio.get_running_loop()
        self._handle = self._loop.call_soon(self._tick)

    def _tick(self) -> None:
        self.count += 1
        self._handle = self._loop.call_soon(self._tick)

    def stop(self) -> None:
        self._handle.cancel()


async def test_a_burst_starts_a_few_per_turn_in_the_order_it_came() -> None:
    pacer, turns = Pacer(per_turn=4), Turns()
    started: list[tuple[int, int]] = []

    async def request(n: int) -> None:
        await pacer.turn()
        started.append((n, turns.count))

    await asyncio.gather(*(request(n) for n in range(30)))
    turns.stop()
    assert [n for n, _ in started] == list(range(30))
    per_turn: dict[int, int] = {}
    for _, turn in started:
        per_turn[turn] = per_turn.get(turn, 0) + 1
    assert max(per_turn.values()) == 4
    assert len(per_turn) >= 30 // 4


async def test_a_request_gone_while_it_waits_holds_up_no_one() -> None:
    pacer = Pacer(per_turn=1)
    first = asyncio.ensure_future(pacer.turn())
    gone = asyncio.ensure_future(pacer.turn())
    last = asyncio.ensure_future(pacer.turn())
    await first
    gone.cancel()
    await asyncio.wait_for(last, 1)
    assert pacer.waiting == 0


def test_a_pacer_lets_at_least_one_request_start() -> None:
    with pytest.raises(ValueError):
        Pacer(per_turn=0)


async def test_an_application_paced_answers_every_request_of_a_burst() -> None:
    pacer, turns = Pacer(per_turn=3), Turns()
    seen: list[int] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(turns.count)
        return web.json_response({"n": int(request.match_info["n"])})

    app = web.Application(middlewares=[pacing_middleware(pacer)])
    app.router.add_get("/{n}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        async with aiohttp.ClientSession() as http:

            async def get(n: int) -> int:
                async with http.get(f"http://127.0.0.1:{port}/{n}") as r:
                    return int((await r.json())["n"])

            assert await asyncio.gather(*(get(n) for n in range(40))) == list(range(40))
    finally:
        turns.stop()
        await runner.cleanup()
    assert max(seen.count(t) for t in set(seen)) <= 3
