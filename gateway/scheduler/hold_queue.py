"""Requests held in the gateway: first come first served, or earliest deadline first.

EDF orders by deadline minus `priority × priority_step_s`. The boost is bounded, so a request
held long enough is older than any boosted newcomer's deadline: nothing starves. Removal is lazy
(a dict says what is still held) and the heap is rebuilt when dead entries outnumber live ones.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterator

from gateway.scheduler.policies.base import Discipline
from gateway.scheduler.request import RequestId, SchedRequest


class HoldQueue:
    def __init__(self, discipline: Discipline, priority_step_s: float) -> None:
        self._edf = discipline == "edf"
        self._step = priority_step_s
        self._heap: list[tuple[float, int, RequestId]] = []
        self._held: dict[RequestId, SchedRequest] = {}
        self._order = itertools.count()

    def __len__(self) -> int:
        return len(self._held)

    def __iter__(self) -> Iterator[SchedRequest]:
        return iter(self._held.values())

    def key(self, req: SchedRequest) -> float:
        return req.deadline - req.priority * self._step if self._edf else 0.0

    def push(self, req: SchedRequest) -> None:
        if req.rid in self._held:
            raise ValueError(f"request {req.rid!r} is already held")
        self._held[req.rid] = req
        heapq.heappush(self._heap, (self.key(req), next(self._order), req.rid))

    def peek(self) -> SchedRequest | None:
        heap = self._heap
        while heap:
            req = self._held.get(heap[0][2])
            if req is not None:
                return req
            heapq.heappop(heap)
        return None

    def pop(self) -> SchedRequest | None:
        req = self.peek()
        if req is not None:
            heapq.heappop(self._heap)
            del self._held[req.rid]
        return req

    def remove(self, rid: str) -> SchedRequest | None:
        req = self._held.pop(RequestId(rid), None)
        if req is not None and len(self._heap) > 2 * len(self._held) + 64:
            self._heap = [e for e in self._heap if e[2] in self._held]
            heapq.heapify(self._heap)
        return req
