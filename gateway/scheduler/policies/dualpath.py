"""`dualpath`: the paper's scheduler as published (§6, Algorithm 1), FIFO.

Prefill: engines with more than β of queued compute are overloaded and get nothing (C1); among
the rest prefer those whose node read queue drains within α (C2) over the others (C3), and take
the one with the fewest unfinished tokens. When every engine is overloaded the request waits.
Decode, two levels: the group (node) with the fewest tokens, then inside it, among engines with
KV memory for the request, those under Z = 1.05 × the projected average tokens by fewest
requests, else the fewest tokens. Read path: the side whose node has the shorter read queue.

Our reading of the units: α and β are seconds (tokens readable in 3 s, tokens computable in 5 s
— the paper counts tokens because its requests are alike; seconds stay right when they are not).
"""

from __future__ import annotations

from collections import defaultdict

from gateway.scheduler.cluster_state import ClusterState, EngineState
from gateway.scheduler.config import SchedulerConfig
from gateway.scheduler.decision import Decision, Hold
from gateway.scheduler.policies.base import candidate, decide, has_memory, shared_paths
from gateway.scheduler.request import SchedRequest


class DualPath:
    name = "dualpath"
    discipline = "fifo"
    sheds = False

    def __init__(self, config: SchedulerConfig) -> None:
        self._config = config

    def _prefill(self, cluster: ClusterState, now: float) -> tuple[EngineState, str] | Hold:
        c = self._config
        pes = [e for e in cluster.healthy("prefill") if e.queue_s(now) <= c.beta_compute_s]
        if not pes:
            return Hold("every prefill engine has more than β of queued compute (C1)")
        short = [e for e in pes if e.node.read_q_s(now) <= c.alpha_read_s]
        pool, klass = (short, "C2") if short else (pes, "C3")
        return min(pool, key=lambda e: (e.tok, e.index)), klass

    def _decode(self, cluster: ClusterState, req: SchedRequest) -> EngineState | Hold:
        groups: defaultdict[str, list[EngineState]] = defaultdict(list)
        for d in cluster.healthy("decode"):
            groups[d.node.name].append(d)
        fitting = {n: g for n, g in groups.items() if any(has_memory(d, req) for d in g)}
        if not fitting:
            need = req.prompt_tokens + req.output_tokens
            return Hold(f"no healthy decode engine has KV memory for {need} tokens")
        group = min(fitting.values(), key=lambda g: (sum(d.tok for d in g), g[0].index))
        length = req.prompt_tokens + req.output_tokens
        z = self._config.z_factor * (length + sum(d.tok for d in group)) / len(group)
        room = [d for d in group if has_memory(d, req)]
        low = [d for d in room if d.tok + length <= z]
        if low:
            return min(low, key=lambda d: (d.seq, d.index))
        return min(room, key=lambda d: (d.tok, d.index))

    def place(self, req: SchedRequest, cluster: ClusterState, now: float) -> Decision | Hold:
        found = self._prefill(cluster, now)
        if isinstance(found, Hold):
            return found
        pe, klass = found
        de = self._decode(cluster, req)
        if isinstance(de, Hold):
            return de
        pe_side = pe.node.read_q_bytes(now) <= de.node.read_q_bytes(
            now
        ) or "de" not in shared_paths(pe, de)
        share = 1.0 if pe_side else 0.0
        chosen = candidate(now, pe, de, req, share, self._config.layerwise)
        side = "prefill" if pe_side else "decode"
        return decide(req, chosen, self.name, f"{klass}; shorter read queue on the {side}", now)
