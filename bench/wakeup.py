"""What a datagram costs a process that does nothing with it: the floor under a relay's pull.

A relay's pulled packets arrive one datagram at a time, each on its own
(57 a second a stream, from publishers of their own), so each is a wake-up
of the pulling process. This measures that wake-up apart from any hub code:
a sender process sends 1,100-byte datagrams over 127.0.0.1 at a steady
rate, and a receiver takes them in an asyncio event loop (a
DatagramProtocol whose `datagram_received` only counts, the hub's loop
with five idle timers of 50 ms beside it), read by the loop as asyncio
reads any socket or by hub.media.reader's thread as a relay's pull is
(compiled where built), or in a plain blocking `recvfrom` loop in Python;
the receiver's CPU (process time, all its threads) per datagram, less its
CPU with the same timers and no datagram. `--burst N` sends N datagrams
back to back each time (the same rate): whether datagrams that come
together share a wake-up.

    .venv/bin/python -m bench.wakeup                 # about 1 minute
    .venv/bin/python -m bench.wakeup --rates 300,2000 --seconds 5
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.machine import machine  # noqa: E402
from hub.media import reader  # noqa: E402

SENDER = """
import socket, sys, time
port, rate, seconds, burst = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
sock, data, start, sent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM), bytes(1100), time.monotonic(), 0
while time.monotonic() - start < seconds:
    for _ in range(burst):
        sock.sendto(data, ("127.0.0.1", port))
    sent += burst
    wait = start + sent / rate - time.monotonic()
    if wait > 0:
        time.sleep(wait)
"""
#: Before and after the window: the sender is running, the receiver's loop warm.
MARGIN = 1.0


def sender(port: int, rate: float, seconds: float, burst: int) -> subprocess.Popen[bytes]:
    args = [str(port), str(rate), str(seconds + 2 * MARGIN), str(burst)]
    return subprocess.Popen([sys.executable, "-c", SENDER, *args])


async def in_event_loop(rate: float, seconds: float, burst: int, thread: bool = False) -> tuple[float, int]:
    """(CPU seconds, datagrams) of an asyncio receiver over the window; rate 0: no sender.
    `thread`: its socket read by hub.media.reader's thread, as a relay's pull is."""
    loop = asyncio.get_running_loop()
    received = [0]

    class Counting(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
            received[0] += 1

    transport, _ = await loop.create_datagram_endpoint(Counting, local_addr=("127.0.0.1", 0))
    if thread:
        await asyncio.sleep(0)  # asyncio starts reading it in the loop's next turn
        reader.watch(transport)

    async def timer() -> None:
        while True:
            await asyncio.sleep(0.05)

    timers = [asyncio.ensure_future(timer()) for _ in range(5)]
    proc = sender(transport.get_extra_info("sockname")[1], rate, seconds, burst) if rate else None
    try:
        await asyncio.sleep(MARGIN)
        cpu, count = time.process_time(), received[0]
        await asyncio.sleep(seconds)
        return time.process_time() - cpu, received[0] - count
    finally:
        for task in timers:
            task.cancel()
        transport.close()
        if proc is not None:
            proc.wait()


def blocking(rate: float, seconds: float, burst: int) -> tuple[float, int]:
    """(CPU seconds, datagrams) of a blocking recvfrom loop over the window."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(MARGIN + 5)
        proc = sender(sock.getsockname()[1], rate, seconds, burst)
        try:
            sock.recvfrom(2048)
            end = time.monotonic() + MARGIN
            while time.monotonic() < end:
                sock.recvfrom(2048)
            cpu, count, end = time.process_time(), 0, time.monotonic() + seconds
            while time.monotonic() < end:
                sock.recvfrom(2048)
                count += 1
            return time.process_time() - cpu, count
        finally:
            proc.wait()


def floor(rate: float, seconds: float, burst: int = 1, idle: float | None = None, thread: bool = False) -> float:
    """µs of CPU an asyncio receiver spends on each datagram at `rate`, less
    its `idle` CPU over the window (measured first if not given)."""
    if idle is None:
        idle, _ = asyncio.run(in_event_loop(0, seconds, burst))
    cpu, count = asyncio.run(in_event_loop(rate, seconds, burst, thread))
    return 1e6 * (cpu - idle) / max(1, count)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", default="60,300,700,2000", help="datagrams a second, comma-separated")
    parser.add_argument("--seconds", type=float, default=8.0, help="window per run (default 8)")
    parser.add_argument(
        "--burst", type=int, default=1, help="datagrams sent back to back each time, same rate (default 1)"
    )
    args = parser.parse_args()
    rates = [float(r) for r in args.rates.split(",")]
    info = machine()
    idle, _ = asyncio.run(in_event_loop(0, args.seconds, args.burst))
    rows = []
    for rate in rates:
        in_loop = floor(rate, args.seconds, args.burst, idle)
        beside = floor(rate, args.seconds, args.burst, idle, thread=True)
        plain, plain_count = blocking(rate, args.seconds, args.burst)
        rows.append((rate, in_loop, beside, 1e6 * plain / max(1, plain_count)))
    print(
        f"Machine: {info['cpu']}, {info['cores']} cores; Python {info['python']}; {info['date']};"
        f" load average at start {info['load_average_at_start']}"
    )
    print(f"1,100-byte datagrams over 127.0.0.1, {args.burst} back to back, window {args.seconds:g} s per run\n")
    print(
        "| datagrams/s | µs CPU a datagram: asyncio loop (less its idle)"
        " | the same loop, its socket read by hub.media.reader | blocking recvfrom |"
    )
    print("| ---: | ---: | ---: | ---: |")
    for rate, in_loop, beside, plain in rows:
        print(f"| {rate:.0f} | {in_loop:.1f} | {beside:.1f} | {plain:.1f} |")


if __name__ == "__main__":
    main()
