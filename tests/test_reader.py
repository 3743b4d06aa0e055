"""hub.media.reader: a socket read beside the event loop, its datagrams handled in the loop's turn."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import AsyncIterator

import pytest

from hub.media import reader


@pytest.fixture(autouse=True, params=["c", "python"])
def body(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each test with the thread's body compiled (hub/media/_reader.c) and in Python."""
    if request.param == "c":
        assert reader._reader is not None, "hub.media._reader is not built"
    else:
        monkeypatch.setattr(reader, "_reader", None)
    return str(request.param)


@pytest.fixture(autouse=True)
async def no_thread_left() -> AsyncIterator[None]:
    """Each test's reader thread ends with its sockets, before the loop
    closes (one that waited for its turn then would wait for good)."""
    yield
    await until(lambda: not reader_threads())


class Recording(asyncio.DatagramProtocol):
    """Records what it is handed, and on which thread, with which running loop."""

    def __init__(self) -> None:
        self.datagrams: list[tuple[bytes, tuple[str, int]]] = []
        self.threads: set[int] = set()
        self.loops: set[asyncio.AbstractEventLoop] = set()
        self.lost = asyncio.get_running_loop().create_future()
        self.on_datagram = lambda data: None

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.datagrams.append((data, addr))
        self.threads.add(threading.get_ident())
        self.loops.add(asyncio.get_running_loop())
        self.on_datagram(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.set_result(exc)


async def endpoint() -> tuple[asyncio.DatagramTransport, Recording, socket.socket]:
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(Recording, local_addr=("127.0.0.1", 0))
    await asyncio.sleep(0)  # asyncio starts reading in its next turn: the reader takes over from there
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender.bind(("127.0.0.1", 0))
    sender.connect(transport.get_extra_info("sockname"))
    return transport, protocol, sender


async def until(condition, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "timed out"
        await asyncio.sleep(0.005)


def reader_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "hub-reader"]


async def test_datagrams_reach_the_protocol_from_the_reader_thread_as_the_loop_s() -> None:
    transport, protocol, sender = await endpoint()
    assert reader.watch(transport)
    assert reader.watched(asyncio.get_running_loop()) == 1
    try:
        for i in range(100):
            sender.send(b"datagram %d" % i)
        await until(lambda: len(protocol.datagrams) == 100)
        assert [data for data, _ in protocol.datagrams] == [b"datagram %d" % i for i in range(100)]
        assert {addr for _, addr in protocol.datagrams} == {sender.getsockname()}
        # Read by the reader's thread, not the loop's; handled as the loop's all the same.
        assert protocol.threads and threading.get_ident() not in protocol.threads
        assert protocol.loops == {asyncio.get_running_loop()}
        # Sending is still the transport's.
        transport.sendto(b"back", sender.getsockname())
        assert sender.recv(100) == b"back"
    finally:
        transport.close()
        sender.close()


async def test_each_datagram_comes_with_its_own_sender_s_address_on_a_shared_socket() -> None:
    # The compiled thread keeps a socket's last source address made once:
    # datagrams of two senders, interleaved, must not take each other's.
    transport, protocol, first = await endpoint()
    second = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    second.bind(("127.0.0.1", 0))
    second.connect(transport.get_extra_info("sockname"))
    assert reader.watch(transport)
    try:
        senders = [first, second, second, first, second, first, first]
        for i, sender in enumerate(senders):
            sender.send(b"%d" % i)
            await until(lambda i=i: len(protocol.datagrams) == i + 1)  # type: ignore[misc]
        assert [addr for _, addr in protocol.datagrams] == [s.getsockname() for s in senders]
    finally:
        transport.close()
        first.close()
        second.close()


async def test_a_datagram_is_never_handled_beside_the_loop_s_own_code() -> None:
    transport, protocol, sender = await endpoint()
    reader.watch(transport)
    busy = threading.Event()
    overlaps: list[bytes] = []
    protocol.on_datagram = lambda data: overlaps.append(data) if busy.is_set() else None

    def long_callback() -> None:
        # The loop's own code, running a while (as a slow callback does) while datagrams arrive.
        busy.set()
        for i in range(20):
            sender.send(b"during %d" % i)
            time.sleep(0.005)
        busy.clear()

    try:
        for _ in range(5):
            asyncio.get_running_loop().call_soon(long_callback)
            await asyncio.sleep(0.02)
        await until(lambda: len(protocol.datagrams) == 100)
        assert overlaps == []
    finally:
        transport.close()
        sender.close()


async def test_what_a_handler_schedules_runs_on_time_though_the_loop_was_waiting_long() -> None:
    loop = asyncio.get_running_loop()
    transport, protocol, sender = await endpoint()
    reader.watch(transport)
    fired: list[float] = []
    answered = loop.create_future()
    # A timer due soon, and a future's result: each must wake a loop that
    # began to wait with nothing due for a second.
    protocol.on_datagram = lambda data: (
        loop.call_later(0.05, lambda: fired.append(time.monotonic()))
        if data == b"timer"
        else answered.set_result(time.monotonic())
    )
    try:
        await asyncio.sleep(0.05)
        sent = time.monotonic()
        sender.send(b"timer")
        await asyncio.wait_for(asyncio.sleep(0.5), 1)  # the loop waits up to 0.5 s from here
        assert fired and fired[0] - sent < 0.3
        sent = time.monotonic()
        threading.Timer(0.05, lambda: sender.send(b"future")).start()
        got = await asyncio.wait_for(answered, 2)
        assert got - sent < 0.3
    finally:
        transport.close()
        sender.close()


async def test_a_failing_handler_loses_its_own_datagram_only(caplog: pytest.LogCaptureFixture) -> None:
    transport, protocol, sender = await endpoint()
    reader.watch(transport)

    def fail_on_bad(data: bytes) -> None:
        if data == b"bad":
            raise ValueError("a bad datagram")

    protocol.on_datagram = fail_on_bad
    try:
        for data in (b"one", b"bad", b"two"):
            sender.send(data)
        await until(lambda: len(protocol.datagrams) == 3)
        sender.send(b"three")
        await until(lambda: len(protocol.datagrams) == 4)
        failures = [r for r in caplog.records if r.getMessage() == "a datagram's handler failed"]
        assert len(failures) == 1 and failures[0].exc_info and "a bad datagram" in str(failures[0].exc_info[1])
    finally:
        transport.close()
        sender.close()


async def test_a_closed_transport_leaves_the_reader_and_the_thread_ends_with_its_last_socket() -> None:
    loop = asyncio.get_running_loop()
    first, first_protocol, first_sender = await endpoint()
    second, second_protocol, second_sender = await endpoint()
    reader.watch(first)
    reader.watch(second)
    assert reader.watched(loop) == 2 and len(reader_threads()) == 1
    first.close()
    assert await asyncio.wait_for(first_protocol.lost, 2) is None  # the protocol still hears of it
    assert reader.watched(loop) == 1
    second_sender.send(b"still read")
    await until(lambda: second_protocol.datagrams)
    second.close()
    await asyncio.wait_for(second_protocol.lost, 2)
    assert reader.watched(loop) == 0
    await until(lambda: not reader_threads())
    # A socket watched after that starts a thread again.
    third, third_protocol, third_sender = await endpoint()
    reader.watch(third)
    third_sender.send(b"again")
    await until(lambda: third_protocol.datagrams)
    third.close()
    await asyncio.wait_for(third_protocol.lost, 2)
    await until(lambda: not reader_threads())
    for sender in (first_sender, second_sender, third_sender):
        sender.close()


@pytest.mark.parametrize("why", ["debug", "closing"])
async def test_a_loop_in_debug_mode_or_a_closing_transport_keeps_its_reading(why: str) -> None:
    loop = asyncio.get_running_loop()
    transport, protocol, sender = await endpoint()
    debug = loop.get_debug()
    if why == "debug":
        loop.set_debug(True)
    else:
        transport.close()
    try:
        assert not reader.watch(transport)
        assert reader.watched(loop) == 0
        if why == "debug":
            sender.send(b"read by asyncio")
            await until(lambda: protocol.datagrams)
            assert protocol.threads == {threading.get_ident()}
    finally:
        loop.set_debug(debug)
        transport.close()
        sender.close()
