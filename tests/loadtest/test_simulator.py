"""The virtual-clock simulator drives the gateway's own scheduler over a small agent workload."""

from __future__ import annotations

import gc
import itertools
import random

import pytest

from engines.engine_model import EngineModel
from gateway.scheduler.cluster_state import ClusterState
from gateway.scheduler.config import SchedulerConfig
from gateway.scheduler.decision import Decision, Hold
from gateway.scheduler.policies.base import Policy
from gateway.scheduler.request import SchedRequest
from loadtest.metrics import SLO, RequestSample
from loadtest.sim.simulator import (
    GC_YOUNG_THRESHOLD,
    SimAgent,
    SimConfig,
    SimResult,
    SimTurn,
    SimulationStuck,
    Simulator,
)


def _agents(n: int, turns: int, seed: int = 1) -> list[SimAgent]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        first = SimTurn(8000 + rng.randint(0, 4000), 100)
        rest = [SimTurn(rng.randint(200, 700), rng.randint(50, 250)) for _ in range(turns - 1)]
        out.append(SimAgent((first, *rest)))
    return out


def _run(policy: str, agents: list[SimAgent], **config: object) -> SimResult:
    return Simulator(SimConfig(policy=policy, **config), agents).run()  # type: ignore[arg-type]


def test_every_turn_finishes_in_order_with_its_whole_context_as_hit() -> None:
    agents = _agents(8, 5)
    result = _run("dualpath-slo", agents)
    assert len(result.samples) == 40 and all(s.ok for s in result.samples)
    by_agent: dict[str, list[RequestSample]] = {}
    for s in result.samples:
        assert s.first_token_at is not None and s.end_at is not None
        assert s.sent_at <= s.first_token_at <= s.end_at
        assert s.second_token_at is not None and s.first_token_at <= s.second_token_at
        by_agent.setdefault(s.agent, []).append(s)
    for agent, samples in by_agent.items():
        samples.sort(key=lambda s: s.turn)
        context = 0
        for s, spec in zip(samples, agents[int(agent)].turns, strict=True):
            assert s.cached_tokens == context
            context += spec.append + spec.output
        for before, after in itertools.pairwise(samples):
            assert before.end_at is not None and after.sent_at >= before.end_at
    summary = result.summary(SLO())
    assert summary["completed"] == 40 and summary["ttft_s"]["p50"] > 0


def test_the_same_workload_gives_the_same_run() -> None:
    agents = _agents(16, 6)
    a, b = _run("dualpath-slo", agents), _run("dualpath-slo", agents)
    assert a.events == b.events and a.jct_s == b.jct_s
    assert a.samples == b.samples


def test_a_run_collects_rarely_and_leaves_the_gc_as_it_found_it() -> None:
    seen: list[tuple[int, int]] = []

    class Watched:  # a `TurnSpec`
        append, output = 300, 10

        @property
        def tool_s(self) -> float:  # read as a turn is sent: during the run
            seen.append((gc.get_threshold()[0], gc.get_freeze_count()))
            return 0.0

    before = gc.get_threshold(), gc.get_freeze_count()
    _run("dualpath-slo", [SimAgent((Watched(), Watched()))])  # type: ignore[arg-type]
    assert (gc.get_threshold(), gc.get_freeze_count()) == before
    assert seen and all(t == GC_YOUNG_THRESHOLD and frozen > 0 for t, frozen in seen)


@pytest.mark.parametrize("policy", ["round_robin", "cache_aware", "basic", "dualpath"])
def test_oracle_is_a_lower_bound_and_basic_reads_only_on_the_prefill_side(policy: str) -> None:
    agents = _agents(24, 6)
    oracle = _run("oracle", agents, prefill=1, decode=2)
    result = _run(policy, agents, prefill=1, decode=2)
    assert oracle.jct_s <= result.jct_s * 1.001
    if policy == "basic":
        assert {s.read_path for s in result.samples} == {"pe"}


def test_dual_path_policies_use_the_decode_nodes_storage_nics() -> None:
    # Long contexts, short appends: storage-bound, as the paper's agent workloads are.
    agents = _agents(32, 8)
    basic = _run("basic", agents, prefill=1, decode=2)
    slo = _run("dualpath-slo", agents, prefill=1, decode=2)
    assert {s.read_path for s in slo.samples} & {"de", "split"}
    assert slo.snic_bytes["d0"] + slo.snic_bytes["d1"] > 0
    assert basic.snic_bytes["d0"] + basic.snic_bytes["d1"] == 0
    assert slo.snic_max_over_avg < basic.snic_max_over_avg


def test_requests_held_for_their_slo_are_looked_at_again_as_time_passes() -> None:
    """Overload with a tight TTFT target: the scheduler holds most requests; every one is
    placed in the end, and the wake-ups move virtual time forward (no loop at one instant)."""
    config = SchedulerConfig(ttft_s=0.05, max_wait_s=1e9)
    result = _run("dualpath-slo", _agents(40, 4), prefill=1, decode=1, scheduler=config)
    assert len(result.samples) == 160 and all(s.ok for s in result.samples)
    assert result.events < 200_000


class _HoldsUntilOneSecond:
    """A policy that keeps asking to be looked at again *now* until t = 1 s."""

    name = "stubborn"
    discipline = "fifo"
    sheds = False

    def __init__(self, inner: Policy) -> None:
        self.inner = inner

    def place(self, req: SchedRequest, cluster: ClusterState, now: float) -> Decision | Hold:
        if now < 1.0:
            return Hold("not yet", until=now)
        return self.inner.place(req, cluster, now)


def test_a_hold_until_now_still_lets_virtual_time_move() -> None:
    sim = Simulator(SimConfig(prefill=1, decode=1, max_events=100_000), _agents(2, 2))
    sim.scheduler.policy = _HoldsUntilOneSecond(sim.scheduler.policy)
    result = sim.run()
    assert all(s.ok for s in result.samples)
    assert min(s.first_token_at or 0 for s in result.samples) >= 1.0


def test_a_stuck_run_stops_with_an_error() -> None:
    with pytest.raises(SimulationStuck):
        Simulator(SimConfig(max_events=10), _agents(2, 2)).run()


def test_layerwise_prefill_hides_the_copy_into_hbm_behind_the_compute() -> None:
    """One agent on an idle engine, 30K cached tokens on its second turn, a compute NIC slow
    enough that copying them from the DRAM buffer into HBM takes about as long as the compute:
    without layer-wise prefill the copy comes first, with it the copy costs nothing; the storage
    read comes first either way (the KV lands in the buffer in whole blocks)."""
    agent = [SimAgent((SimTurn(30_000, 8), SimTurn(20_000, 8)))]
    plain = _run("basic", agent, prefill=1, decode=1, cnic_gbps=1.8)
    layered = _run("basic", agent, prefill=1, decode=1, cnic_gbps=1.8, layerwise=True)
    second = next(s for s in plain.samples if s.turn == 1)
    second_layered = next(s for s in layered.samples if s.turn == 1)
    assert second_layered.ttft_s is not None and second.ttft_s is not None
    copy_s = EngineModel.named("ds-v3.2-660b").with_nics(None, 1.8).h2d_s(30_008)
    assert second.ttft_s - second_layered.ttft_s == pytest.approx(copy_s, rel=1e-6)
