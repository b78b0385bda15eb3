"""The scheduler in real time: the pure `gateway.scheduler`, one per model, driven by live
requests, the worker registry and the load poller. A held request waits here on a future.

`sync` copies the registry into the schedulers' cluster state (new workers, each fresh
`/v1/loads` report, and whether each may take requests: healthy, breaker closed or probing, not
draining; a worker gone from the registry is taken out) and runs on every load poll and whenever
the registry says a worker's usability changed. Every event (a request, its first token, its
end, a poll) runs the scheduler, and a timer wakes it when a held request may become placeable
as queues drain. A request held past `hold_timeout_s` gets 503; one the scheduler sheds, 429.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import time
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, cast

from engines.worker_registry import Worker, WorkerRegistry
from gateway.engine_costs import cost_for, read_paths_of
from gateway.errors import APIError, NoHealthyWorker, Overloaded
from gateway.placement import PDPair
from gateway.scheduler.cluster_state import ClusterState, EngineState, LoadReport, Role
from gateway.scheduler.config import SchedulerConfig
from gateway.scheduler.decision import Decision
from gateway.scheduler.request import RequestId, SchedRequest
from gateway.scheduler.scheduler import Scheduler
from gateway.settings import SchedulingConfig

log = logging.getLogger(__name__)


class LiveScheduler:
    def __init__(
        self,
        registry: WorkerRegistry,
        config: SchedulerConfig,
        scheduling: SchedulingConfig,
        retry_after_s: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._registry = registry
        self._config = config
        self._scheduling = scheduling
        self._retry_after_s = retry_after_s
        self._clock = clock
        self._schedulers: dict[str, Scheduler] = {}
        """One per model the registry knows: bounded by the registry."""
        self._workers: dict[str, Worker] = {}
        self._loads_seen: dict[str, float] = {}
        self._waiting: dict[RequestId, asyncio.Future[Decision]] = {}
        """Held requests' futures: bounded by `max_held` per model."""
        self._wake: asyncio.TimerHandle | None = None
        registry.subscribe(self.sync)

    @property
    def policy(self) -> str:
        return self._config.policy

    def _scheduler(self, model: str) -> Scheduler:
        sched = self._schedulers.get(model)
        if sched is None:
            sched = self._schedulers[model] = Scheduler(ClusterState(self._config))
        return sched

    def cluster(self, model: str) -> ClusterState:
        """The scheduler's view of one model's engines."""
        return self._scheduler(model).cluster

    def schedulers(self) -> Mapping[str, Scheduler]:
        """Each model's scheduler, read-only, for views of live state (`/metrics`, dashboard)."""
        return MappingProxyType(self._schedulers)

    def sync(self) -> None:
        """Registry → cluster state, then schedule whatever became placeable."""
        current: dict[str, Worker] = {}
        for w in self._registry.all:
            if w.model is None:
                continue
            current[w.url] = w
            self._workers[w.url] = w  # a worker registered again under its URL is a new object
            cluster = self._scheduler(w.model).cluster
            usable = self._registry.usable(w)
            if w.url not in cluster.engines:
                cluster.add_engine(
                    w.url,
                    cast(Role, w.role),
                    cost_for(w, self._scheduling.engine_model),
                    read_paths=read_paths_of(w),
                    healthy=usable,
                )
            cluster.set_healthy(w.url, usable)
            load = w.load
            if load is not None and self._loads_seen.get(w.url) != load.at:
                self._loads_seen[w.url] = load.at
                report = LoadReport(
                    load.at,
                    load.running,
                    load.waiting,
                    load.used_tokens,
                    load.max_tokens,
                    load.read_q_bytes,
                    load.cnic_q_bytes,
                )
                cluster.reconcile(w.url, report)
        self._forget_removed(current)
        for model in self._schedulers:
            self._pump(model)

    def _forget_removed(self, current: Mapping[str, Worker]) -> None:
        """Workers removed from the registry (drained) take no more requests. Their engine
        stays in the cluster state, unhealthy, so a worker registered again under the same URL
        finds it (and the requests still booked on it can finish)."""
        for url in [u for u in self._workers if u not in current]:
            del self._workers[url]
            self._loads_seen.pop(url, None)
            for sched in self._schedulers.values():
                if url in sched.cluster.engines:
                    sched.cluster.set_healthy(url, False)

    async def place(
        self, model: str, req: SchedRequest, exclude: frozenset[str] = frozenset()
    ) -> tuple[Decision, PDPair]:
        """A decision for `req`, waiting while the scheduler holds it.

        `exclude`: worker URLs that just failed this request (a retry): it is placed elsewhere
        when it is placed at once. (A retry the scheduler holds goes wherever it fits when it
        is released; a worker that keeps failing is kept out by its breaker.)"""
        for role in ("prefill", "decode"):
            if not [w for w in self._registry.available(role, model) if w.url not in exclude]:
                raise NoHealthyWorker(
                    f"no healthy {role} worker for model {model!r}; try again shortly",
                    retry_after_s=self._retry_after_s,
                )
        sched = self._scheduler(model)
        if not sched.cluster.healthy("prefill") or not sched.cluster.healthy("decode"):
            self.sync()  # the registry found workers since the last poll
        shed = sched.submit(req, self._clock())
        if shed is not None:
            raise Overloaded(
                f"the gateway is overloaded: {shed.reason}; retry later",
                retry_after_s=max(math.ceil(shed.retry_after_s), 1),
            )
        future: asyncio.Future[Decision] = asyncio.get_running_loop().create_future()
        self._waiting[req.rid] = future
        try:
            self._pump(model, exclude)
            async with asyncio.timeout(self._scheduling.hold_timeout_s):
                decision = await future
        except TimeoutError:
            # Placed just as the timer fired? Then `_pump` found the future done and released it.
            sched.cancel(req.rid)
            raise NoHealthyWorker(
                f"no placement within {self._scheduling.hold_timeout_s:g}s: "
                f"{sched.last_hold.reason if sched.last_hold else 'held'}",
                retry_after_s=self._retry_after_s,
            ) from None
        except BaseException:
            sched.cancel(req.rid)  # the client went away while held
            raise
        finally:
            self._waiting.pop(req.rid, None)
        prefill, decode = self._workers.get(decision.prefill), self._workers.get(decision.decode)
        if prefill is None or decode is None:  # removed (drained) since it was placed
            sched.finished(req.rid, self._clock())
            raise NoHealthyWorker(
                "the worker chosen for this request was just removed; try again",
                retry_after_s=self._retry_after_s,
            )
        return decision, PDPair(prefill, decode)

    def first_token(self, model: str, rid: str) -> None:
        sched = self._schedulers.get(model)
        if sched is not None:
            sched.first_token(rid, self._clock())
            self._pump(model)

    def finished(self, model: str, rid: str, output_tokens: int | None) -> None:
        sched = self._schedulers.get(model)
        if sched is not None:
            sched.finished(rid, self._clock(), output_tokens)
            self._pump(model)

    def _pump(self, model: str, exclude: frozenset[str] = frozenset()) -> None:
        sched = self._schedulers[model]
        now = self._clock()
        # Excluded engines sit this pass out (the pure scheduler knows only healthy or not).
        masked = [
            e for url in exclude if (e := sched.cluster.engines.get(url)) is not None and e.healthy
        ]
        for engine in masked:
            sched.cluster.set_healthy(engine.id, False)
        try:
            decisions = sched.schedule(now)
        except Exception as exc:  # a bug: fail the head request, never wedge the queue
            log.exception("scheduling failed")
            head = sched.drop_head()
            future = self._waiting.get(head.rid) if head is not None else None
            if future is not None and not future.done():
                future.set_exception(APIError(f"scheduling failed: {exc}"))
            decisions = []
        finally:
            for engine in masked:
                sched.cluster.set_healthy(engine.id, True)
        for decision in decisions:
            future = self._waiting.get(decision.rid)
            if future is None or future.done():
                sched.finished(decision.rid, now)  # its client gave up as it was placed
            else:
                future.set_result(decision)
        self._arm()

    def _arm(self) -> None:
        """Wake the schedulers when a held head may become placeable without any event."""
        wakes = [w for s in self._schedulers.values() if (w := s.wake_at()) is not None]
        if self._wake is not None:
            self._wake.cancel()
            self._wake = None
        if wakes:
            delay = min(max(min(wakes) - self._clock(), 0.001), 1.0)
            self._wake = asyncio.get_running_loop().call_later(delay, self._on_wake)

    def _on_wake(self) -> None:
        self._wake = None
        for model in self._schedulers:
            self._pump(model)

    def close(self) -> None:
        if self._wake is not None:
            self._wake.cancel()

    def explain(self, limit: int) -> dict[str, Any]:
        """Recent decisions with their candidates, the held requests and each engine's state,
        per model (`GET /debug/decisions`)."""
        now = self._clock()
        models = {model: _view(sched, now, limit) for model, sched in self._schedulers.items()}
        return {"policy": self._config.policy, "models": models}


def _view(sched: Scheduler, now: float, limit: int) -> dict[str, Any]:
    decisions = list(sched.decisions)[-limit:] if limit > 0 else []
    return {
        "held": sched.held,
        "last_hold": sched.last_hold.reason if sched.held and sched.last_hold else None,
        "counters": dataclasses.asdict(sched.counters),
        "engines": [_engine(e, now) for e in sched.cluster.engines.values()],
        "decisions": [_decision(d, now) for d in reversed(decisions)],
    }


def _engine(e: EngineState, now: float) -> dict[str, Any]:
    return {
        "id": e.id,
        "role": e.role,
        "healthy": e.healthy,
        "read_paths": sorted(e.read_paths),
        "seq": e.seq,
        "tok": e.tok,
        "queue_s": round(e.queue_s(now), 6),
        "read_q_s": round(e.node.read_q_s(now), 6),
        "kv_free_tokens": None if math.isinf(e.kv_free_tokens) else e.kv_free_tokens,
        "ttft_factor": round(e.ttft_factor, 4),
        "tpot_factor": round(e.tpot_factor, 4),
    }


def _decision(d: Decision, now: float) -> dict[str, Any]:
    return {
        "rid": d.rid,
        "age_s": round(now - d.at, 3),
        "prefill": d.prefill,
        "decode": d.decode,
        "read_path": d.read_path,
        "pe_share": round(d.pe_share, 4),
        "predicted_ttft_s": round(d.predicted_ttft_s, 6),
        "predicted_tpot_s": round(d.predicted_tpot_s, 6),
        "waited_s": round(d.waited_s, 6),
        "policy": d.policy,
        "reason": d.reason,
        "candidates": [
            {
                "prefill": c.prefill,
                "decode": c.decode,
                "read_path": c.read_path,
                "pe_share": round(c.pe_share, 4),
                "ttft_s": round(c.ttft_s, 6),
                "tpot_s": round(c.tpot_s, 6),
            }
            for c in d.candidates
        ],
    }
