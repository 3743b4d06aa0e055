"""Quotas: how much one client may hold (sessions, rooms) or send (messages),
so that one client's burst costs only itself."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass


class QuotaExceeded(Exception):
    """A client asked for more than its quota; asking again after
    `retry_after` seconds may succeed."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = max(1, math.ceil(retry_after))


@dataclass(frozen=True)
class Limits:
    """What `Rooms` enforces, from the HUB_* settings `docs/operate.md` lists."""

    whip_per_user: int
    whip_per_room: int
    whep_per_user: int
    whep_per_room: int
    rooms_per_site: int
    empty_room_seconds: float
    #: A session that has not connected by then is removed, so a refused
    #: client may retry after it.
    connect_seconds: float


class TokenBucket:
    """`burst` tokens at most, refilled at `rate` per second; each action takes one."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._at = time.monotonic()

    def _refill(self) -> None:
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now

    def take(self) -> bool:
        """Take a token if there is one; False means over the limit."""
        self._refill()
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False

    def wait(self) -> float:
        """Seconds until the next token."""
        self._refill()
        return max(0.0, (1 - self._tokens) / self.rate) if self.rate > 0 else math.inf
