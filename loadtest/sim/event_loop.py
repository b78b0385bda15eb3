"""A discrete-event loop: a virtual clock and a heap of callbacks, ties broken by insertion order
so the same inputs always give the same event trace (SimPy's `Environment`, reduced)."""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from typing import Any


class EventLoop:
    def __init__(self) -> None:
        self.now = 0.0
        self._heap: list[tuple[float, int, Callable[..., None], tuple[Any, ...]]] = []
        self._order = itertools.count()
        self.processed = 0

    def at(self, when: float, fn: Callable[..., None], *args: Any) -> None:
        """Run `fn(*args)` at virtual time `when` (never in the past)."""
        heapq.heappush(self._heap, (max(when, self.now), next(self._order), fn, args))

    def after(self, delay: float, fn: Callable[..., None], *args: Any) -> None:
        self.at(self.now + max(delay, 0.0), fn, *args)

    def run(self, until: float = float("inf"), max_events: int = 100_000_000) -> None:
        heap = self._heap
        while heap and heap[0][0] <= until and self.processed < max_events:
            when, _, fn, args = heapq.heappop(heap)
            self.now = when
            self.processed += 1
            fn(*args)

    @property
    def pending(self) -> int:
        return len(self._heap)
