"""Comparisons and capacity search on small simulated workloads."""

from __future__ import annotations

import statistics
from dataclasses import replace
from typing import Any

import pytest

from loadtest.metrics import SLO
from loadtest.sim.experiments import (
    Window,
    agent_run_s,
    arrivals,
    capacity,
    compare,
    judge,
    online_trial,
    parse_cluster,
)
from loadtest.sim.simulator import SimAgent, SimConfig, SimTurn


def _agents(n: int, turns: int) -> list[SimAgent]:
    return [SimAgent((SimTurn(6000, 50), *(SimTurn(400, 60) for _ in range(turns - 1))))] * n


def test_cluster_shapes() -> None:
    assert parse_cluster("2P4D") == (2, 4) and parse_cluster("48p96d") == (48, 96)
    for bad in ("2P", "0P1D", "P4D", "2x4"):
        with pytest.raises(ValueError, match="xPyD"):
            parse_cluster(bad)


def test_arrivals_offline_and_poisson() -> None:
    assert arrivals(3, None, 1) == [0.0, 0.0, 0.0]
    times = arrivals(4000, 2.0, 7)
    assert times == arrivals(4000, 2.0, 7) and times == sorted(times)
    gaps = [b - a for a, b in zip([0.0, *times], times, strict=False)]
    assert statistics.fmean(gaps) == pytest.approx(0.5, rel=0.05)
    with pytest.raises(ValueError):
        arrivals(1, 0.0, 1)


def test_compare_runs_every_policy_on_the_same_work() -> None:
    out = compare(_agents(12, 4), SimConfig(prefill=1, decode=2), ["basic", "oracle"], SLO())
    runs = out["policies"]
    assert set(runs) == {"basic", "oracle"}
    assert runs["basic"]["requests"] == runs["oracle"]["requests"] == 48
    assert out["jct_basic_over"]["basic"] == 1.0
    assert out["jct_basic_over"]["oracle"] >= 1.0
    assert runs["basic"]["ttft_p99_s"] >= runs["basic"]["ttft_p50_s"] > 0


def _verdicts(found: dict[str, Any]) -> dict[float, bool]:
    return {float(aps): v["meets"] for aps, v in found["tried"].items()}


def test_capacity_is_where_the_slo_stops_being_met() -> None:
    config = SimConfig(prefill=1, decode=1)
    slo = SLO(ttft_s=0.5, tpot_s=0.1)
    window = Window(warmup_s=20.0, measure_s=30.0, tail_s=10.0)
    found = capacity(_agents(30, 3), config, slo, 3, window, low=0.05, high=50.0, precision=0.05)
    tried = _verdicts(found)
    assert found["aps"] is not None and 0.05 <= found["aps"] < 50.0
    assert all(ok for aps, ok in tried.items() if aps <= found["aps"])
    assert not any(ok for aps, ok in tried.items() if aps > found["aps"] * 1.0001)
    # The bracket closed to the asked precision around the answer.
    above = min(aps for aps, ok in tried.items() if not ok)
    assert above / found["aps"] <= 1.05 + 1e-9
    # Past capacity the turns judged get later the longer the cluster runs.
    worst = tried and found["tried"][f"{max(tried):.5g}"]
    assert worst["tail_ttft_p90_s"] > slo.ttft_s


def test_a_trial_judges_only_the_turns_sent_in_its_window() -> None:
    pool = _agents(8, 3)
    slo = SLO(ttft_s=4.0, tpot_s=0.1)
    window = Window(warmup_s=10.0, measure_s=20.0, tail_s=5.0)
    result = online_trial(pool, SimConfig(prefill=1, decode=1), 0.5, 1, window, slo)
    assert max(s.sent_at for s in result.samples) < window.end_s + slo.ttft_s
    verdict = judge(result, slo, window)
    inside = [s for s in result.samples if window.start_s <= s.sent_at < window.end_s]
    assert verdict["requests"] == len(inside) > 0 and verdict["meets"]
    # A turn still waiting for its first token when the clock stops counts as late.
    late = [replace(s, first_token_at=None, end_at=None) for s in result.samples]
    assert not judge(replace(result, samples=tuple(late)), slo, window)["meets"]
    shed = replace(result, shed_arrivals=(window.start_s + 1.0,))
    assert judge(shed, slo, window)["sheds"] == 1 and not judge(shed, slo, window)["meets"]
    before = replace(result, shed_arrivals=(window.start_s - 1.0,))
    assert judge(before, slo, window)["meets"]


def test_the_warm_up_is_one_agent_run_at_the_slo_edge() -> None:
    agent = SimAgent((SimTurn(100, 11, 2.0), SimTurn(100, 1)))
    assert agent_run_s([agent], SLO(ttft_s=4.0, tpot_s=0.05)) == pytest.approx(
        (2.0 + 4.0 + 10 * 0.05) + 4.0
    )
