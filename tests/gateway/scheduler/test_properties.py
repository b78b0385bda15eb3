"""Properties every policy keeps on arbitrary cluster states (hypothesis)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.scheduler.cluster_state import ClusterState
from gateway.scheduler.config import SchedulerConfig
from gateway.scheduler.decision import Decision, Hold
from gateway.scheduler.policies import POLICIES, make_policy
from gateway.scheduler.policies.base import has_memory
from gateway.scheduler.request import SchedRequest
from tests.gateway.scheduler.builders import cluster, request


@dataclass(frozen=True)
class EngineDraw:
    healthy: bool
    compute_free_at: float
    snic_free_at: float
    cnic_free_at: float
    seq: int
    tok: int
    capacity: int | None
    used: int


engine_draws = st.builds(
    EngineDraw,
    healthy=st.booleans() | st.just(True),
    compute_free_at=st.floats(0, 20),
    snic_free_at=st.floats(0, 20),
    cnic_free_at=st.floats(0, 5),
    seq=st.integers(0, 300),
    tok=st.integers(0, 2_000_000),
    capacity=st.none() | st.integers(1_000, 500_000),
    used=st.integers(0, 500_000),
)
requests = st.builds(
    request,
    hit=st.integers(0, 200_000),
    append=st.integers(1, 20_000),
    output=st.integers(0, 4_000),
    ttft=st.floats(0.1, 30),
    tpot=st.floats(0.005, 1),
    priority=st.integers(-2, 2),
    session=st.none() | st.sampled_from(["a", "b"]),
)
states = st.tuples(
    st.lists(engine_draws, min_size=1, max_size=8), st.lists(engine_draws, min_size=1, max_size=8)
)


def build(draws: tuple[list[EngineDraw], list[EngineDraw]]) -> ClusterState:
    prefill, decode = draws
    state = cluster(len(prefill), len(decode))
    for prefix, group in (("p", prefill), ("d", decode)):
        for i, draw in enumerate(group):
            e = state.engines[f"{prefix}{i}"]
            state.set_healthy(e.id, draw.healthy)
            e.compute_free_at, e.seq, e.tok = draw.compute_free_at, draw.seq, draw.tok
            e.node.snic_free_at, e.node.cnic_free_at = draw.snic_free_at, draw.cnic_free_at
            e.kv_capacity_tokens, e.kv_reported_used = draw.capacity, draw.used
    return state


def place(name: str, state: ClusterState, req: SchedRequest, now: float) -> Decision | Hold:
    return make_policy(SchedulerConfig(policy=name)).place(req, state, now)


@settings(max_examples=150, deadline=None)
@given(states, requests, st.floats(0, 10))
def test_decisions_use_healthy_engines_with_memory_and_whole_shares(
    draws: tuple[list[EngineDraw], list[EngineDraw]], req: SchedRequest, now: float
) -> None:
    for name in POLICIES:
        state = build(draws)
        verdict = place(name, state, req, now)
        can = bool(state.healthy("prefill")) and any(
            has_memory(d, req) for d in state.healthy("decode")
        )
        if isinstance(verdict, Hold):
            assert verdict.reason
            if name in ("round_robin", "cache_aware", "basic"):
                assert not can, f"{name} held a placeable request: {verdict.reason}"
            continue
        pe, de = state.engines[verdict.prefill], state.engines[verdict.decode]
        assert pe.healthy and pe.role == "prefill", name
        assert de.healthy and de.role == "decode" and has_memory(de, req), name
        assert 0.0 <= verdict.pe_share <= 1.0 and verdict.pe_share + verdict.de_share == 1.0
        for t in (verdict.predicted_ttft_s, verdict.predicted_tpot_s):
            assert math.isfinite(t) and t >= 0.0
        if name == "dualpath":
            shorter = pe.node.read_q_bytes(now) <= de.node.read_q_bytes(now)
            assert verdict.read_path == ("pe" if shorter else "de")


@settings(max_examples=100, deadline=None)
@given(states, st.lists(requests, min_size=1, max_size=5), st.floats(0, 10))
def test_same_state_and_requests_give_the_same_decisions(
    draws: tuple[list[EngineDraw], list[EngineDraw]], reqs: list[SchedRequest], now: float
) -> None:
    for name in POLICIES:
        runs = []
        for _ in range(2):
            state, policy = build(draws), make_policy(SchedulerConfig(policy=name))
            runs.append([policy.place(r, state, now) for r in reqs])
        assert runs[0] == runs[1], name
