"""Datagrams read by a thread beside the event loop, handled in the loop's turn.

asyncio wakes its loop for each datagram it reads: the selector's wait
returns, one iteration runs, one `recvfrom`, the protocol's
`datagram_received`, and the selector waits again. A relay's pull is that
for every packet (57 a second a stream, each arriving alone), and that
wake-up alone cost more CPU than forwarding a packet to two viewers
(bench/wakeup.py at 700 datagrams a second: 112 µs a datagram for an
asyncio loop that ignores them, 36 read by this module's compiled thread).

A `Reader` takes a datagram transport's socket off the loop's selector and
reads it in a thread of its own, which hands each datagram to the same
protocol's `datagram_received`. The thread runs Python only in *the loop's
turn*: a lock the loop thread holds at all times except while it waits in
its selector. So a datagram is handled exactly where a loop callback would
run - between two iterations, never beside any other code of the loop -
and nothing it touches needs to be thread-safe. In its turn the thread is
the loop's (`asyncio.get_running_loop()` answers it); whatever the handler
schedules (a callback, a timer, a future's result) wakes the selector if it
is due before the wait would end, as `call_soon_threadsafe` does.

The socket stays the transport's: sending and closing are asyncio's. A
socket leaves the reader when its protocol loses its connection (before
asyncio closes the socket), and the thread ends with its last socket.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import select
import socket
import threading
from collections.abc import Callable
from typing import Any

try:
    from hub.media import _reader
except ImportError:  # not built (setup.py marks it optional): the thread in Python
    _reader = None

log = logging.getLogger(__name__)

#: Datagrams read from one socket in one turn, at most: the loop's next
#: iteration waits no longer than that for the thread.
BATCH = 32
#: Seconds between the thread's looks at whether it is to stop, while it
#: waits for the turn (as _reader.c's TURN_PATIENCE_NS).
TURN_PATIENCE = 0.1
#: As asyncio's datagram transport reads (`max_size`).
MAX_DATAGRAM = 256 * 1024
#: The loop's attribute that holds its reader.
_READER = "_hub_reader"
#: The settings HUB_PULL_READER takes: a thread beside the loop reads relays'
#: pulls, handing them to the handler `watch` is given ("lane") or to their
#: protocol ("thread"), or the loop does, as asyncio reads any socket.
READ_MODES = ("lane", "thread", "loop")
_mode = "lane"


def use_mode(mode: str) -> str:
    """Read the sockets `watch` is given in a thread ("lane", "thread") or
    leave them to the loop ("loop"); says what is on, and how the thread runs."""
    global _mode
    if mode not in READ_MODES:
        raise ValueError(f"the pull reader is one of {', '.join(READ_MODES)}")
    _mode = mode
    if mode == "loop":
        return "in the event loop"
    return (
        "in a thread beside the event loop"
        + (" (compiled)" if _reader is not None else " (Python: _reader is not built)")
        + (", through the express lane" if mode == "lane" else "")
    )


def watch(transport: asyncio.DatagramTransport, handler: Callable[[Any], Any] | None = None) -> bool:
    """Read `transport`'s datagrams beside its loop from now on (called on
    the loop's thread); False if they stay the loop's to read: a closing
    transport, one of no socket of its own (TURN), mode "loop", a loop in debug mode,
    whose checks refuse scheduling from another thread whatever the turn.

    The datagrams go to the protocol's `datagram_received`, or, with
    `handler` in mode "lane", to that of what `handler(protocol)` gives (one
    that takes some of them itself and hands the protocol the rest)."""
    loop = asyncio.get_running_loop()
    if (
        _mode == "loop"
        or loop.get_debug()
        or transport.is_closing()
        or not isinstance(getattr(transport, "_sock", None), socket.socket)
    ):
        return False
    reader: Reader | None = getattr(loop, _READER, None)
    if reader is None:
        reader = Reader(loop)
        setattr(loop, _READER, reader)
    reader.watch(transport, handler if _mode == "lane" else None)
    return True


def watched(loop: asyncio.AbstractEventLoop) -> int:
    """How many sockets `loop`'s reader reads now."""
    reader: Reader | None = getattr(loop, _READER, None)
    return 0 if reader is None else len(reader.sockets)


class Reader:
    """One loop's reading thread and its sockets; see the module's docstring.

    Every method but the thread's runs on the loop's thread, in its turn."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop: Any = loop  # a selector event loop: its selector, ready queue and timers are what a turn is about
        # The thread's body: compiled (hub/media/_reader.c), or Python's; each with its own turn.
        self._compiled = _reader
        self._turn: Any = threading.Lock() if _reader is None else _reader.Turn()
        self._turn.acquire()  # this is the loop's thread, running
        self._selector_wait = self._loop._selector.select
        self._loop._selector.select = self._select
        # While the loop waits: when its first timer was due as it began to
        # wait (what its wait's timeout is from); None: it is not waiting.
        self._first_timer: float | None = None
        self.sockets: dict[int, tuple[socket.socket, Any]] = {}
        # The running thread's: what it waits on, and how it is told to look
        # again; None: no thread (the last one's sockets all left).
        self._epoll: select.epoll | None = None
        self._wake = -1

    def _select(self, timeout: float | None) -> Any:
        if timeout != 0:
            timers = self._loop._scheduled
            self._first_timer = timers[0]._when if timers else math.inf
        self._turn.release()
        try:
            return self._selector_wait(timeout)
        finally:
            self._turn.acquire()
            self._first_timer = None

    def watch(self, transport: asyncio.DatagramTransport, handler: Callable[[Any], Any] | None) -> None:
        sock: socket.socket = transport._sock  # type: ignore[attr-defined]
        protocol: Any = transport.get_protocol()
        fd = sock.fileno()
        if fd in self.sockets:
            return  # a bundled pull's transceivers share their sockets
        if self._epoll is None:
            self._start()
        assert self._epoll is not None
        self._loop._remove_reader(fd)
        self.sockets[fd] = (sock, protocol if handler is None else handler(protocol))
        self._epoll.register(fd, select.EPOLLIN)
        lost = protocol.connection_lost

        def connection_lost(exc: Exception | None) -> None:
            # asyncio calls this before it closes the socket: its number leaves the thread's wait first.
            self._unwatch(fd)
            lost(exc)

        protocol.connection_lost = connection_lost

    def _start(self) -> None:
        self._epoll = epoll = select.epoll()
        wake, self._wake = os.pipe()
        os.set_blocking(wake, False)
        epoll.register(wake, select.EPOLLIN)
        threading.Thread(target=self._run, args=(epoll, wake, self._wake), name="hub-reader", daemon=True).start()

    def _unwatch(self, fd: int) -> None:
        if self.sockets.pop(fd, None) is None or self._epoll is None:
            return
        self._epoll.unregister(fd)
        if not self.sockets:
            # The thread ends without waiting for a turn (the loop may never
            # wait again: it stops, or closes); a socket watched later starts
            # another one.
            self._epoll = None
            os.write(self._wake, b"\0")

    def _run(self, epoll: select.epoll, wake: int, wake_write: int) -> None:
        asyncio.events._set_running_loop(self._loop)
        try:
            if self._compiled is not None:
                self._compiled.run(self, epoll, wake, self._turn, BATCH)
                return
            while True:
                ready = epoll.poll()
                if not self._take_turn(epoll):
                    return
                try:
                    if epoll is not self._epoll:
                        return
                    self._handle(ready, wake)
                    self._wake_loop()
                finally:
                    self._turn.release()
        finally:
            epoll.close()
            os.close(wake)
            os.close(wake_write)

    def _take_turn(self, epoll: select.epoll) -> bool:
        """Take the loop's turn; False if told to stop first. The loop that
        would give it may have closed meanwhile (its last socket left), so
        the wait looks again every TURN_PATIENCE seconds."""
        while epoll is self._epoll:
            if self._turn.acquire(timeout=TURN_PATIENCE):
                return True
        return False

    def _handle(self, ready: list[tuple[int, int]], wake: int) -> None:
        for fd, _ in ready:
            if fd == wake:
                continue
            entry = self.sockets.get(fd)
            if entry is None:
                continue  # left the reader after the wait returned it
            sock, protocol = entry
            for _ in range(BATCH):
                try:
                    data, addr = sock.recvfrom(MAX_DATAGRAM)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError as exc:
                    protocol.error_received(exc)
                    break
                try:
                    protocol.datagram_received(data, addr)
                except Exception as exc:  # as asyncio does: one datagram's failure is logged, reading goes on
                    self._handler_failed(exc)
                if fd not in self.sockets:
                    break  # its handler closed it

    def _handler_failed(self, exc: BaseException) -> None:
        log.error("a datagram's handler failed", exc_info=exc)

    def _wake_loop(self) -> None:
        """Wake the loop's wait if what the handlers scheduled is due before it ends."""
        loop, first = self._loop, self._first_timer
        if first is None:
            return  # not waiting: it looks at its ready queue and timers as they are now
        if loop._ready or (loop._scheduled and loop._scheduled[0]._when < first):
            loop._write_to_self()
