"""`basic`: the paper's baseline: prefill-side reads only, the least-loaded engines by tokens."""

from __future__ import annotations

from gateway.scheduler.cluster_state import ClusterState
from gateway.scheduler.config import SchedulerConfig
from gateway.scheduler.decision import Decision, Hold
from gateway.scheduler.policies.base import candidate, decide, engines_for
from gateway.scheduler.request import SchedRequest


class Basic:
    name = "basic"
    discipline = "fifo"
    sheds = False

    def __init__(self, config: SchedulerConfig) -> None:
        self._config = config

    def place(self, req: SchedRequest, cluster: ClusterState, now: float) -> Decision | Hold:
        found = engines_for(req, cluster)
        if isinstance(found, Hold):
            return found
        pes, des = found
        pe = min(pes, key=lambda e: (e.tok, e.index))
        de = min(des, key=lambda e: (e.tok, e.index))
        chosen = candidate(now, pe, de, req, 1.0, self._config.layerwise)
        return decide(req, chosen, self.name, "fewest tokens, prefill-side read", now)
