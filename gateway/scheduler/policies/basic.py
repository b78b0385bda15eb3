"""`basic`: the paper's baseline: prefill-side reads only, the least-loaded engines by tokens.

`basic-dual` is the paper's ablation step between `basic` and `dualpath` (Fig. 12): the same
placement, with dual-path loading but without the dual-path scheduling, so the read side
alternates (round robin, the baseline the paper's §5.6 measures DualPath scheduling against)
instead of following the shorter read queue (§4.4, part of the scheduling).
"""

from __future__ import annotations

from gateway.scheduler.cluster_state import ClusterState
from gateway.scheduler.config import SchedulerConfig
from gateway.scheduler.decision import Decision, Hold
from gateway.scheduler.policies.base import candidate, decide, engines_for, shared_paths
from gateway.scheduler.request import SchedRequest


class Basic:
    name = "basic"
    discipline = "fifo"
    sheds = False
    dual_reads = False

    def __init__(self, config: SchedulerConfig) -> None:
        self._config = config
        self._reads = 0

    def place(self, req: SchedRequest, cluster: ClusterState, now: float) -> Decision | Hold:
        found = engines_for(req, cluster)
        if isinstance(found, Hold):
            return found
        pes, des = found
        pe = min(pes, key=lambda e: (e.tok, e.index))
        de = min(des, key=lambda e: (e.tok, e.index))
        share, side = 1.0, "prefill"
        if self.dual_reads and "de" in shared_paths(pe, de):
            self._reads += 1
            if self._reads % 2 == 0:
                share, side = 0.0, "decode"
        chosen = candidate(now, pe, de, req, share, self._config.layerwise)
        return decide(req, chosen, self.name, f"fewest tokens, {side}-side read", now)


class BasicDual(Basic):
    name = "basic-dual"
    dual_reads = True
