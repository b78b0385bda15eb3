"""A per-worker circuit breaker: passive health from real requests, next to the active checks.

Health checks poll `/health` every few seconds; a worker can pass them and still fail every
request (a wedged scheduler, an OOM-ing model, a dead NIC). The breaker watches the requests
themselves:

    closed ──(failure_threshold consecutive failures)──▶ open
    open ──(cool_down_s elapsed)──▶ half-open
    half-open ──(its one probe request succeeds)──▶ closed
    half-open ──(its probe fails)──▶ open (a new cool-down)

A failure is a connect error, a 5xx, a reset, or a timeout before the worker's first byte (and a
stream the worker breaks off); a success is an answer (its first byte, or a whole prefill leg). A
request that ends for reasons not the worker's (its client left, a 4xx) is neither. While open, or
half-open with its probe out, the worker takes no new requests, as if unhealthy.

Pure: every call takes `now` (any monotonic clock), nothing here reads one.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    """`DUALPATH_BREAKER_FAILURE_THRESHOLD`, `DUALPATH_BREAKER_COOL_DOWN_S`."""

    failure_threshold: int = 3
    """Consecutive request failures that open the breaker; 0 turns breakers off."""
    cool_down_s: float = 5.0
    """How long an open breaker keeps the worker out before one probe request may go."""


class CircuitBreaker:
    __slots__ = ("_opened_at", "_probing", "failures", "opened", "policy")

    def __init__(self, policy: BreakerPolicy | None = None) -> None:
        self.policy = policy or BreakerPolicy()
        self.failures = 0
        """Consecutive failures since the last success."""
        self.opened = 0
        """Times it opened (for `GET /workers` and logs)."""
        self._opened_at: float | None = None
        self._probing = False

    def state(self, now: float) -> BreakerState:
        if self._opened_at is None:
            return BreakerState.CLOSED
        if now - self._opened_at < self.policy.cool_down_s:
            return BreakerState.OPEN
        return BreakerState.HALF_OPEN

    def available(self, now: float) -> bool:
        """Whether a new request may be placed on the worker now."""
        state = self.state(now)
        return state is BreakerState.CLOSED or (
            state is BreakerState.HALF_OPEN and not self._probing
        )

    def dispatched(self, now: float) -> None:
        """A request was placed on the worker: when half-open, it is the probe."""
        if self.state(now) is BreakerState.HALF_OPEN:
            self._probing = True

    def released(self) -> None:
        """A request ended without a verdict on the worker: a probe slot it held is free again."""
        self._probing = False

    def succeeded(self) -> bool:
        """Record a success; True when this closed the breaker."""
        was_open = self._opened_at is not None
        self.failures = 0
        self._opened_at = None
        self._probing = False
        return was_open

    def failed(self, now: float) -> bool:
        """Record a failure; True when this opened (or re-opened) the breaker."""
        self.failures += 1
        threshold = self.policy.failure_threshold
        if threshold <= 0:
            return False
        state = self.state(now)
        if state is BreakerState.HALF_OPEN or (
            state is BreakerState.CLOSED and self.failures >= threshold
        ):
            self._opened_at = now
            self._probing = False
            self.opened += 1
            return True
        return False  # already open: the cool-down runs from when it opened

    def retry_in_s(self, now: float) -> float:
        """Seconds until an open breaker turns half-open (0 when it is not open)."""
        if self._opened_at is None:
            return 0.0
        return max(self._opened_at + self.policy.cool_down_s - now, 0.0)
