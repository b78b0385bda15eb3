"""Comparisons and capacity search on small simulated workloads."""

from __future__ import annotations

import statistics

import pytest

from loadtest.metrics import SLO
from loadtest.sim.experiments import arrivals, capacity, compare, parse_cluster
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


def test_capacity_is_where_the_slo_stops_being_met() -> None:
    config = SimConfig(prefill=1, decode=1)
    slo = SLO(ttft_s=0.5, tpot_s=0.1)
    found = capacity(_agents(30, 3), config, slo, seed=3, low=0.05, high=50.0, steps=8)
    tried = {float(aps): ok for aps, ok in found["tried"].items()}
    assert 0.05 <= found["aps"] < 50.0
    assert all(ok for aps, ok in tried.items() if aps <= found["aps"])
    assert not any(ok for aps, ok in tried.items() if aps > found["aps"] * 1.0001)
