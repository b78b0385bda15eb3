"""Placement: which prefill and which decode worker take a request.

Round-robin over the healthy workers of the requested model, as a baseline; the scheduler issue
replaces it with the SLO-aware dual-path scheduler behind the same `choose` call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from engines.worker_registry import Worker, WorkerRegistry
from gateway.errors import NoHealthyWorker


@dataclass(frozen=True, slots=True)
class PDPair:
    prefill: Worker
    decode: Worker


class Placement(Protocol):
    def choose(self, model: str) -> PDPair: ...


class RoundRobinPlacement:
    def __init__(self, registry: WorkerRegistry, retry_after_s: int) -> None:
        self._registry = registry
        self._retry_after_s = retry_after_s
        # One counter per (role, model); bounded by the models the registry knows.
        self._turn: dict[tuple[str, str], int] = {}

    def _next(self, role: str, model: str) -> Worker:
        workers = self._registry.healthy(role, model)
        if not workers:
            raise NoHealthyWorker(
                f"no healthy {role} worker for model {model!r}; try again shortly",
                retry_after_s=self._retry_after_s,
            )
        turn = self._turn.get((role, model), 0)
        self._turn[(role, model)] = turn + 1
        return workers[turn % len(workers)]

    def choose(self, model: str) -> PDPair:
        return PDPair(self._next("prefill", model), self._next("decode", model))
