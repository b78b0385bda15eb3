"""Per-key rate limits: GCRA buckets in memory, or shared by gateway replicas through Redis.

A limit of N per minute is a bucket of N units refilled at N/60 per second (GCRA, the
"theoretical arrival time" form: one float per bucket). A request costing c units is admitted
when the bucket holds min(c, N) units, and c units are taken: a request larger than a whole
minute's allowance waits for a full bucket, then leaves the key in debt, so the long-run rate
still holds. A refused request takes nothing and learns how long until it would be admitted.

    Limiter                 the seam: `acquire(bucket, cost, per_min) -> wait_s`
    ├── LocalLimiter        this process only; at most `max_buckets` buckets (LRU evicted)
    ├── RedisLimiter        one atomic Lua script per call on Redis's clock (`redis_rate_limits`)
    └── FailoverLimiter     Redis while it answers, the local limiter while it does not

Limits are about fairness, not correctness: an outage of Redis degrades to per-replica limits
for `retry_interval_s` at a time, never to an error answered to the client.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

from gateway.errors import LimiterUnavailable

__all__ = ["WINDOW_S", "FailoverLimiter", "Limiter", "LocalLimiter", "gcra"]

log = logging.getLogger(__name__)

WINDOW_S = 60.0
"""Limits are per minute; a full bucket is one minute's allowance."""
_EPSILON_S = 1e-9
"""Float slack, so a bucket spent by exact intervals is not refused for rounding."""


def gcra(tat: float, now: float, cost: int, per_min: int) -> tuple[float, float]:
    """One decision: (the bucket's new theoretical arrival time, wait in seconds).

    `tat` is when the bucket would next be full; a wait of 0 admits and charges `cost`, a
    positive wait refuses and leaves `tat` as it was.
    """
    interval = WINDOW_S / per_min
    start = max(tat, now)
    wait = start - now - (WINDOW_S - min(cost, per_min) * interval)
    if wait > _EPSILON_S:
        return tat, wait
    return start + cost * interval, 0.0


class Limiter(Protocol):
    async def acquire(self, bucket: str, cost: int, per_min: int) -> float:
        """Charge `cost` to `bucket` (limit `per_min` > 0) and return 0.0, or refuse and return
        the seconds until it would be admitted."""
        ...

    async def close(self) -> None: ...


class LocalLimiter:
    """GCRA buckets in this process. A bucket that is full again needs no entry; past
    `max_buckets` the least recently used is dropped (it starts over full: a bounded map
    trades a little leniency for memory)."""

    name = "local"

    def __init__(self, max_buckets: int = 10_000, clock: Callable[[], float] = time.monotonic):
        if max_buckets < 1:
            raise ValueError("max_buckets must be positive")
        self.max_buckets = max_buckets
        self._clock = clock
        self._tats: OrderedDict[str, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._tats)

    def take(self, bucket: str, cost: int, per_min: int) -> float:
        now = self._clock()
        tat = self._tats.pop(bucket, now)
        new_tat, wait = gcra(tat, now, cost, per_min)
        if new_tat > now:  # not full: remember it, most recently used last
            self._tats[bucket] = new_tat
            while len(self._tats) > self.max_buckets:
                self._tats.popitem(last=False)
        return wait

    async def acquire(self, bucket: str, cost: int, per_min: int) -> float:
        return self.take(bucket, cost, per_min)

    async def close(self) -> None:
        self._tats.clear()


class FailoverLimiter:
    """`primary` (Redis) while it answers; `fallback` for `retry_interval_s` after it fails.

    One warning per outage, one info line when the primary answers again; the caller never
    sees `LimiterUnavailable`.
    """

    def __init__(
        self,
        primary: Limiter,
        fallback: LocalLimiter,
        *,
        retry_interval_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.primary = primary
        self.fallback = fallback
        self.retry_interval_s = retry_interval_s
        self._clock = clock
        self.degraded = False
        self.failovers = 0
        """Outages seen."""
        self.fallback_calls = 0
        self._down_until = 0.0

    async def acquire(self, bucket: str, cost: int, per_min: int) -> float:
        if self.degraded and self._clock() < self._down_until:
            self.fallback_calls += 1
            return self.fallback.take(bucket, cost, per_min)
        try:
            wait = await self.primary.acquire(bucket, cost, per_min)
        except LimiterUnavailable as exc:
            self._mark_down(exc)
            self.fallback_calls += 1
            return self.fallback.take(bucket, cost, per_min)
        if self.degraded:
            self.degraded = False
            log.info("rate limits are shared through Redis again")
        return wait

    def _mark_down(self, exc: LimiterUnavailable) -> None:
        self._down_until = self._clock() + self.retry_interval_s
        if self.degraded:
            return
        self.degraded = True
        self.failovers += 1
        log.warning(
            "rate-limit store unavailable (%s); limiting per gateway process, retrying every %.1fs",
            exc,
            self.retry_interval_s,
        )

    async def close(self) -> None:
        await self.primary.close()
        await self.fallback.close()
