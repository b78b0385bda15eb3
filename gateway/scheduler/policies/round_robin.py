"""`round_robin`: engines in turn, prefill-side reads (what a plain load balancer does)."""

from __future__ import annotations

from gateway.scheduler.cluster_state import ClusterState
from gateway.scheduler.config import SchedulerConfig
from gateway.scheduler.decision import Decision, Hold
from gateway.scheduler.policies.base import candidate, decide, engines_for
from gateway.scheduler.request import SchedRequest


class RoundRobin:
    name = "round_robin"
    discipline = "fifo"
    sheds = False

    def __init__(self, config: SchedulerConfig) -> None:
        self._config = config
        self._turn = 0

    def place(self, req: SchedRequest, cluster: ClusterState, now: float) -> Decision | Hold:
        found = engines_for(req, cluster)
        if isinstance(found, Hold):
            return found
        pes, des = found
        turn = self._turn
        self._turn += 1
        pe, de = pes[turn % len(pes)], des[turn % len(des)]
        chosen = candidate(now, pe, de, req, 1.0, self._config.layerwise)
        return decide(req, chosen, self.name, "next in turn", now)
