"""What `dualpath simulate` runs: one policy, a comparison of several on the same work, or the
online capacity (the most agents per second that still meet the SLO), with JSON-ready results.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from loadtest.metrics import SLO, RequestSample, percentile
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


@dataclass(frozen=True, slots=True)
class Window:
    """An online trial: agents arrive for `warmup_s + measure_s`; the turns sent in the last
    `measure_s` are judged, when the cluster holds as many agents as it will (Little's law: the
    arrival rate × one agent's run)."""

    warmup_s: float
    measure_s: float = 300.0
    tail_s: float = 150.0
    """The paper's sliding window: the last `tail_s` must meet the SLO too (a cluster past its
    capacity gets worse the longer it runs)."""

    @property
    def start_s(self) -> float:
        return self.warmup_s

    @property
    def end_s(self) -> float:
        return self.warmup_s + self.measure_s


def agent_run_s(agents: Sequence[AgentSpec], slo: SLO) -> float:
    """The mean agent's run with every turn at the edge of the SLO (TTFT and TPOT at target):
    the longest warm-up an acceptable load needs to fill the cluster."""
    runs = [
        sum(t.tool_s + slo.ttft_s + max(t.output - 1, 0) * slo.tpot_s for t in a.turns)
        for a in agents
    ]
    return sum(runs) / len(runs) if runs else 0.0


def online_trial(
    pool: Sequence[AgentSpec], config: SimConfig, aps: float, seed: int, window: Window, slo: SLO
) -> SimResult:
    """Poisson arrivals at `aps` over the window, each agent a trajectory of `pool` in turn (a
    data set of trajectories replayed, as the paper's 500), the clock stopped once the last
    turns sent in the window had their time to meet TTFT."""
    times: list[float] = []
    rng = random.Random(seed)
    at = rng.expovariate(aps)
    while at < window.end_s:
        times.append(at)
        at += rng.expovariate(aps)
    agents = [pool[i % len(pool)] for i in range(len(times))]
    return Simulator(replace(config, until_s=window.end_s + slo.ttft_s), agents, times).run()


def judge(result: SimResult, slo: SLO, window: Window) -> dict[str, Any]:
    """Whether the turns sent in the window met the SLO: TTFT and TPOT at p90, over the window
    and over its last `tail_s`, and none shed. A turn with no first token yet counts as late."""
    lo, hi = window.start_s, window.end_s
    inside = [s for s in result.samples if lo <= s.sent_at < hi]
    tail = [s for s in inside if s.sent_at >= hi - window.tail_s]

    def p90_ttft(samples: Sequence[RequestSample]) -> float | None:
        ttft = [s.ttft_s if s.ttft_s is not None else float("inf") for s in samples]
        return percentile(ttft, 0.9)

    tpot = percentile([t for s in inside if (t := s.tpot_s) is not None], 0.9)
    ttft, tail_ttft = p90_ttft(inside), p90_ttft(tail)
    sheds = sum(1 for at in result.shed_arrivals if lo <= at < hi)
    ok = (
        bool(tail)
        and sheds == 0
        and ttft is not None
        and ttft <= slo.ttft_s
        and tail_ttft is not None
        and tail_ttft <= slo.ttft_s
        and (tpot is None or tpot <= slo.tpot_s)
    )
    return {
        "meets": ok,
        "requests": len(inside),
        "ttft_p90_s": ttft,
        "tail_ttft_p90_s": tail_ttft,
        "tpot_p90_s": tpot,
        "sheds": sheds,
        "wall_s": result.wall_s,
    }


def capacity(
    pool: Sequence[AgentSpec],
    config: SimConfig,
    slo: SLO,
    seed: int,
    window: Window | None = None,
    low: float = 0.01,
    high: float = 10.0,
    precision: float = 0.03,
) -> dict[str, Any]:
    """The most agents per second whose turns meet the SLO in steady state, by geometric
    bisection between `low` and `high` down to a `precision` ratio. `window` defaults to one
    agent run at the SLO's edge of warm-up and 300 s measured."""
    window = window or Window(warmup_s=agent_run_s(pool, slo))
    tried: dict[float, dict[str, Any]] = {}

    def ok(aps: float) -> bool:
        tried[aps] = judge(online_trial(pool, config, aps, seed, window, slo), slo, window)
        return bool(tried[aps]["meets"])

    def report(aps: float | None, note: str | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "aps": aps,
            "window": {"warmup_s": window.warmup_s, "measure_s": window.measure_s},
            "tried": {f"{k:.5g}": v for k, v in sorted(tried.items())},
        }
        if note:
            out["note"] = note
        return out

    if not ok(low):
        return report(0.0, "even the lower bound misses the SLO")
    lo, hi = low, high
    while hi / lo > 1 + precision:
        mid = (lo * hi) ** 0.5  # geometric: capacities span orders of magnitude
        lo, hi = (mid, hi) if ok(mid) else (lo, mid)
    # The upper bound is tried last, and only if it matters: an overloaded trial is the dearest.
    if hi == high and ok(high):
        return report(None, f"the upper bound {high:g} itself meets the SLO: no capacity found")
    return report(lo)
