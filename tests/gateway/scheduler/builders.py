"""Builders for scheduler state: a linear cost model, clusters and requests in one line each."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from gateway.scheduler.cluster_state import ClusterState, Role
from gateway.scheduler.config import SchedulerConfig
from gateway.scheduler.request import RequestId, SchedRequest


@dataclass(frozen=True, slots=True)
class LinearCost:
    """Round numbers: 1 ms per computed token, 1 kB of KV per token, 1 MB/s storage NIC (1 s
    per 1,000 hit tokens), 10 MB/s compute NIC, decode 10 ms + 1 ms per sequence."""

    layers: int = 10
    snic_bytes_per_s: float = 1e6
    cnic_bytes_per_s: float = 1e7
    compute_s_per_token: float = 1e-3

    def kv_bytes(self, tokens: float) -> float:
        return tokens * 1000.0

    def prefill_compute_s(self, append_tokens: int, cached_tokens: int) -> float:
        return max(append_tokens, 1) * self.compute_s_per_token

    def prefill_marginal_s(self, append_tokens: int, cached_tokens: int) -> float:
        return self.prefill_compute_s(append_tokens, cached_tokens)  # no fixed cost to share

    def decode_step_s(self, batch_size: int, context_tokens: int) -> float:
        return 0.010 + 0.001 * batch_size


COST = LinearCost()
_rids = itertools.count()


def cluster(
    prefill: int = 2,
    decode: int = 2,
    *,
    config: SchedulerConfig | None = None,
    cost: LinearCost = COST,
    kv_capacity_tokens: int | None = None,
) -> ClusterState:
    """`p0..`, `d0..`, each on its own node."""
    state = ClusterState(config or SchedulerConfig())
    roles: list[tuple[Role, str, int]] = [("prefill", "p", prefill), ("decode", "d", decode)]
    for role, prefix, n in roles:
        for i in range(n):
            capacity = kv_capacity_tokens if role == "decode" else None
            state.add_engine(f"{prefix}{i}", role, cost, kv_capacity_tokens=capacity)
    return state


def request(
    hit: int = 1000,
    append: int = 100,
    output: int = 50,
    *,
    at: float = 0.0,
    ttft: float = 4.0,
    tpot: float = 0.05,
    priority: int = 0,
    session: str | None = None,
    rid: str | None = None,
) -> SchedRequest:
    return SchedRequest(
        rid=RequestId(rid or f"r{next(_rids)}"),
        hit_tokens=hit,
        append_tokens=append,
        output_tokens=output,
        arrival=at,
        ttft_target_s=ttft,
        tpot_target_s=tpot,
        priority=priority,
        session=session,
    )
