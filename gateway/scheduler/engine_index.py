"""Engines ranked by one key, for top-k queries in O(k log n) instead of a scan per decision.

A lazy heap: every change of an engine's key pushes a new entry with a new version, and entries
whose version is not the engine's current one are dropped when they surface. The heap is rebuilt
when dead entries outnumber live ones four to one, so it stays O(engines). Keys must be absolute
(a free-at time, a token count), never relative to `now`, so time passing changes no order.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.scheduler.cluster_state import EngineState

Key = Callable[["EngineState"], float]


class Ranking:
    def __init__(self, key: Key) -> None:
        self._key = key
        self._heap: list[tuple[float, int, int, EngineState]] = []
        self._live: dict[int, tuple[float, int]] = {}
        """Engine index → (its current key, the version of its live entry)."""
        self._versions = 0

    def __len__(self) -> int:
        return len(self._live)

    def touch(self, engine: EngineState) -> None:
        """(Re)rank an engine after its key may have changed."""
        key = self._key(engine)
        live = self._live.get(engine.index)
        if live is not None and live[0] == key:
            return
        self._versions += 1
        self._live[engine.index] = (key, self._versions)
        heapq.heappush(self._heap, (key, engine.index, self._versions, engine))
        if len(self._heap) > 4 * len(self._live) + 64:
            self._heap = [e for e in self._heap if self._live.get(e[1], (0, -1))[1] == e[2]]
            heapq.heapify(self._heap)

    def remove(self, engine: EngineState) -> None:
        self._live.pop(engine.index, None)

    def smallest(
        self, k: int, accept: Callable[[EngineState], bool] | None = None
    ) -> list[EngineState]:
        """The `k` engines with the smallest keys that `accept` takes, smallest first."""
        heap, live = self._heap, self._live
        out: list[EngineState] = []
        seen: list[tuple[float, int, int, EngineState]] = []
        while heap and len(out) < k:
            entry = heapq.heappop(heap)
            if live.get(entry[1], (0, -1))[1] != entry[2]:
                continue  # superseded: dropped for good
            seen.append(entry)
            if accept is None or accept(entry[3]):
                out.append(entry[3])
        for entry in seen:
            heapq.heappush(heap, entry)
        return out
