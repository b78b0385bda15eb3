"""The hit a turn can really load: the session's estimate, checked against the KV store.

The session step knows which tokens the engines computed for a session before, but the store may
have evicted some of those blocks since (LRU), and evicted blocks are computed again, not loaded.
Before scheduling, one batched `exists` look-up asks the store about the blocks the plan names
inside its hit (`TurnPlan.probe_points`), and the hit is cut back to the end of the leading run
of probed blocks that are all there.

The check may only lower the estimate, and never fails a request: past `timeout_s`, or when the
store raises, or when it is down, the turn keeps the session's estimate and the failure is
counted. A failed look-up answers every key as missing (the store contract), so an all-missing
answer is believed only when a second look-up agrees with no store error counted around it.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from kvstore.store import KVStore
from session.tracker import TurnPlan

log = logging.getLogger(__name__)


@dataclass(slots=True)
class ProbeCounters:
    probes: int = 0
    """Turns with a hit that were checked against the store."""
    confirmed: int = 0
    """Of those, the whole estimated hit was there."""
    lowered: int = 0
    """The store held less: the hit was cut back."""
    tokens_lowered: int = 0
    """Hit tokens taken off estimates, in all."""
    failures: int = 0
    """The store timed out, raised or was down: the estimate was kept."""


class _ProbeFailed(Exception):
    """The store could not answer; the estimate stands."""


def confirmed_blocks(indexes: list[int], present: list[bool]) -> int:
    """Blocks confirmed by a look-up: one past the largest probed index such that every probed
    index up to it is present; 0 when the first one is missing."""
    confirmed = 0
    for index, ok in zip(indexes, present, strict=True):
        if not ok:
            break
        confirmed = index + 1
    return confirmed


class HitProbe:
    def __init__(self, store: KVStore, timeout_s: float) -> None:
        if timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        self.store = store
        self.timeout_s = timeout_s
        self.counters = ProbeCounters()
        self._down = False  # log once per outage, not per request

    async def confirmed_hit(self, plan: TurnPlan) -> int:
        """The plan's hit tokens that the store holds (never more than the plan's estimate)."""
        points = plan.probe_points() if plan.hit_tokens > 0 else []
        if not points:
            return plan.hit_tokens  # nothing to confirm, or no key to confirm it with
        c = self.counters
        c.probes += 1
        indexes = [index for index, _ in points]
        try:
            async with asyncio.timeout(self.timeout_s):
                present = await self._ask([key for _, key in points])
        except Exception as exc:  # a timeout, a failed or down store: degrade, never fail the turn
            c.failures += 1
            if not self._down:
                log.warning("KV store hit probe failed (%r): keeping estimated hits", exc)
            self._down = True
            return plan.hit_tokens
        self._down = False
        hit = min(confirmed_blocks(indexes, present) * plan.block_tokens, plan.hit_tokens)
        if hit < plan.hit_tokens:
            c.lowered += 1
            c.tokens_lowered += plan.hit_tokens - hit
        else:
            c.confirmed += 1
        return hit

    async def _ask(self, keys: list[bytes]) -> list[bool]:
        present = await self._exists(keys)
        if any(present):
            return present  # a partial answer proves the store is up and answered
        # All missing is rare (a whole chain evicted, a flushed store) but it is also what a
        # failed look-up answers (the store contract: misses, not an exception), and a store
        # that is up again by the time we ask would vouch for it. So believe it only from a
        # second look-up with no store error counted around it.
        before = await self.store.stats()
        present = await self._exists(keys)
        after = await self.store.stats()
        if not (before.available and after.available and after.errors == before.errors):
            raise _ProbeFailed("the store is unavailable or failed the look-up")
        return present

    async def _exists(self, keys: list[bytes]) -> list[bool]:
        present = await self.store.exists(keys)
        if len(present) != len(keys):
            raise _ProbeFailed(f"exists answered {len(present)} flags for {len(keys)} keys")
        return present
