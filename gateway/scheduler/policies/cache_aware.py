"""`cache_aware`: SGLang router's behaviour, approximately: a session sticks to the prefill
engine that served it (its prefix is warm there) unless load is imbalanced, in which case the
least-loaded engine takes it. Decode: fewest requests. Prefill-side reads."""

from __future__ import annotations

from collections import OrderedDict

from gateway.scheduler.cluster_state import ClusterState, EngineState
from gateway.scheduler.config import SchedulerConfig
from gateway.scheduler.decision import Decision, EngineId, Hold
from gateway.scheduler.policies.base import candidate, decide, engines_for
from gateway.scheduler.request import SchedRequest


def _least_loaded(engines: list[EngineState]) -> EngineState:
    return min(engines, key=lambda e: (e.seq, e.index))


class CacheAware:
    name = "cache_aware"
    discipline = "fifo"
    sheds = False

    def __init__(self, config: SchedulerConfig) -> None:
        self._config = config
        self._affinity: OrderedDict[str, EngineId] = OrderedDict()

    def _imbalanced(self, pes: list[EngineState]) -> bool:
        c = self._config
        busiest = max(e.seq for e in pes)
        idlest = min(e.seq for e in pes)
        return busiest - idlest > c.imbalance_abs and busiest > c.imbalance_rel * idlest

    def place(self, req: SchedRequest, cluster: ClusterState, now: float) -> Decision | Hold:
        found = engines_for(req, cluster)
        if isinstance(found, Hold):
            return found
        pes, des = found
        pe, reason = _least_loaded(pes), "least loaded"
        pinned = self._affinity.get(req.session) if req.session else None
        if pinned is not None:
            warm = cluster.engines.get(pinned)
            if warm is not None and warm.healthy and not self._imbalanced(pes):
                pe, reason = warm, "session affinity"
        if req.session:
            self._affinity[req.session] = pe.id
            self._affinity.move_to_end(req.session)
            while len(self._affinity) > self._config.affinity_sessions:
                self._affinity.popitem(last=False)
        chosen = candidate(now, pe, _least_loaded(des), req, 1.0, self._config.layerwise)
        return decide(req, chosen, self.name, reason, now)
