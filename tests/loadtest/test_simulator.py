"""The virtual-clock simulator drives the gateway's own scheduler over a small agent workload."""

from __future__ import annotations

import itertools
import random

import pytest

from loadtest.sim.simulator import SimAgent, SimConfig, SimResult, SimTurn, Simulator


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
    assert len(result.records) == 40
    by_agent: dict[int, list] = {}
    for r in result.records:
        assert r.first_token is not None and r.end is not None
        assert r.arrival <= r.first_token <= r.end
        by_agent.setdefault(r.agent, []).append(r)
    for agent, records in by_agent.items():
        records.sort(key=lambda r: r.turn)
        context = 0
        for r, spec in zip(records, agents[agent].turns, strict=True):
            assert r.hit == context
            context += spec.append + spec.output
        for before, after in itertools.pairwise(records):
            assert before.end is not None and after.arrival >= before.end


def test_the_same_workload_gives_the_same_run() -> None:
    agents = _agents(16, 6)
    a, b = _run("dualpath-slo", agents), _run("dualpath-slo", agents)
    assert a.events == b.events and a.jct_s == b.jct_s
    assert [(r.first_token, r.read_path) for r in a.records] == [
        (r.first_token, r.read_path) for r in b.records
    ]


@pytest.mark.parametrize("policy", ["round_robin", "cache_aware", "basic", "dualpath"])
def test_oracle_is_a_lower_bound_and_basic_reads_only_on_the_prefill_side(policy: str) -> None:
    agents = _agents(24, 6)
    oracle = _run("oracle", agents, prefill=1, decode=2)
    result = _run(policy, agents, prefill=1, decode=2)
    assert oracle.jct_s <= result.jct_s * 1.001
    if policy == "basic":
        assert {r.read_path for r in result.records} == {"pe"}


def test_dual_path_policies_use_the_decode_nodes_storage_nics() -> None:
    # Long contexts, short appends: storage-bound, as the paper's agent workloads are.
    agents = _agents(32, 8)
    basic = _run("basic", agents, prefill=1, decode=2)
    slo = _run("dualpath-slo", agents, prefill=1, decode=2)
    assert {r.read_path for r in slo.records} & {"de", "split"}
    assert sum(slo.snic_bytes[1:]) > 0 and sum(basic.snic_bytes[1:]) == 0
    assert slo.snic_max_over_avg < basic.snic_max_over_avg
