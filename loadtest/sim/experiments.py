"""What `dualpath simulate` runs: one policy, a comparison of several on the same work, or the
online capacity (the most agents per second that still meet the SLO), with JSON-ready results.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from loadtest.metrics import SLO
from loadtest.sim.simulator import AgentSpec, SimConfig, SimResult, Simulator

_CLUSTER = re.compile(r"^(\d+)P(\d+)D$", re.IGNORECASE)


def parse_cluster(text: str) -> tuple[int, int]:
    """`2P4D` → (2, 4): prefill and decode engines (one node each)."""
    m = _CLUSTER.match(text.strip())
    if m is None or int(m.group(1)) < 1 or int(m.group(2)) < 1:
        raise ValueError(f"a cluster is xPyD with x, y >= 1 (e.g. 2P4D), not {text!r}")
    return int(m.group(1)), int(m.group(2))


def arrivals(count: int, aps: float | None, seed: int) -> list[float]:
    """Offline (`aps` None): everyone at 0. Online: a Poisson process of `aps` agents/s."""
    if aps is None:
        return [0.0] * count
    if not aps > 0:
        raise ValueError(f"agents per second must be positive, not {aps}")
    rng = random.Random(seed)
    at, out = 0.0, []
    for _ in range(count):
        at += rng.expovariate(aps)
        out.append(at)
    return out


def flat(result: SimResult, slo: SLO) -> dict[str, Any]:
    """The figures of one run, flat (`ttft_p99_s`, …) as `--json` writes them."""
    s = result.summary(slo)
    out: dict[str, Any] = {
        "jct_s": s["jct_s"],
        "requests": s["requests"],
        "completed": s["completed"],
        "snic_max_over_avg": s["snic_max_over_avg"],
        "goodput_rps": s["goodput_rps"],
        "throughput_rps": s["throughput_rps"],
        "slo_met_ratio": s["slo_met"] / s["requests"] if s["requests"] else 0.0,
        "sheds": s["sheds"],
        "read_path_share": s["read_path_share"],
        "events": s["events"],
        "wall_s": s["wall_s"],
        "simulated_requests_per_s": s["simulated_requests_per_s"],
    }
    for metric in ("ttft", "ttst", "tpot", "e2e"):
        for q in ("p50", "p90", "p99", "mean"):
            out[f"{metric}_{q}_s"] = s[f"{metric}_s"][q]
    return out


def run_all(
    agents: Sequence[AgentSpec],
    config: SimConfig,
    policies: Sequence[str],
    times: Sequence[float] | None = None,
) -> dict[str, SimResult]:
    """The same agents and arrivals under each policy."""
    return {p: Simulator(replace(config, policy=p), agents, times).run() for p in policies}


def compare_results(results: dict[str, SimResult], slo: SLO) -> dict[str, Any]:
    """Each run's figures, and JCT ratios against the first."""
    runs = {p: flat(r, slo) for p, r in results.items()}
    first = next(iter(runs))
    base = runs[first]["jct_s"]
    ratios = {p: base / r["jct_s"] if r["jct_s"] else None for p, r in runs.items()}
    return {"policies": runs, f"jct_{first}_over": ratios}


def compare(
    agents: Sequence[AgentSpec],
    config: SimConfig,
    policies: Sequence[str],
    slo: SLO,
    times: Sequence[float] | None = None,
) -> dict[str, Any]:
    """The same agents and arrivals under each policy; ratios against the first."""
    return compare_results(run_all(agents, config, policies, times), slo)


def meets(result: SimResult, slo: SLO) -> bool:
    """The online criterion: TTFT and TPOT at the 90th percentile within target, nothing shed."""
    s = result.summary(slo)
    ttft, tpot = s["ttft_s"]["p90"], s["tpot_s"]["p90"]
    return (
        s["completed"] == s["requests"]
        and s["sheds"] == 0
        and ttft is not None
        and ttft <= slo.ttft_s
        and (tpot is None or tpot <= slo.tpot_s)
    )


def capacity(
    agents: Sequence[AgentSpec],
    config: SimConfig,
    slo: SLO,
    seed: int,
    low: float = 0.01,
    high: float = 10.0,
    steps: int = 10,
) -> dict[str, Any]:
    """The most agents per second meeting the SLO, by bisection between `low` and `high`
    (`aps` None when even `high` meets it). The agents must be enough to keep arriving for
    longer than one agent's run at the rates tried, or the cluster never sees a steady load."""
    tried: dict[float, bool] = {}

    def ok(aps: float) -> bool:
        result = Simulator(config, agents, arrivals(len(agents), aps, seed)).run()
        tried[aps] = meets(result, slo)
        return tried[aps]

    def report(aps: float | None, note: str | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "aps": aps,
            "tried": {f"{k:.5g}": v for k, v in sorted(tried.items())},
        }
        if note:
            out["note"] = note
        return out

    if not ok(low):
        return report(0.0, "even the lower bound misses the SLO")
    if ok(high):  # not a capacity: too few agents to load the cluster, or the bound is low
        return report(None, f"the upper bound {high:g} itself meets the SLO: no capacity found")
    lo, hi = low, high
    for _ in range(steps):
        mid = (lo * hi) ** 0.5  # geometric: capacities span orders of magnitude
        lo, hi = (mid, hi) if ok(mid) else (lo, mid)
    return report(lo)
