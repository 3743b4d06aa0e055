"""Where a benchmark runs: the machine (printed beside every table of
figures), a free loopback port for the servers it starts, and the CPU time
a process of it has used."""

from __future__ import annotations

import contextlib
import datetime
import os
import platform
import socket
from pathlib import Path
from typing import Any

import aiortc
import av
import psutil


def machine() -> dict[str, Any]:
    model = platform.processor() or "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "aiortc": aiortc.__version__,
        "av": av.__version__,
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "load_average_at_start": tuple(round(x, 2) for x in os.getloadavg()),
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(proc: psutil.Process) -> float:
    """CPU time of a process's threads, in seconds, as the scheduler counts it (ns).

    psutil's CPU times tick at 10 ms: 0.2 % of a core over a 5 s window,
    more than a relay is meant to cost. A thread that ends inside the window
    takes its share with it (a hub forwarding packets starts none).
    """
    total = 0
    for stat in Path(f"/proc/{proc.pid}/task").glob("*/schedstat"):
        with contextlib.suppress(OSError):  # the thread ended
            total += int(stat.read_text().split()[0])
    return total / 1e9
