"""Scheduler decision latency: one `schedule` call placing one request, per policy and size.

Two timings per iteration: `schedule` (the policy's placement plus the booking of the decision
on the cluster state: what a request costs the gateway) and the placement alone (`place_only`).
A cluster of N engines (N/2 prefill, N/2 decode, one node each, DeepSeek-V3.2 660B on 8×H200
nodes from `engines.engine_model`) is loaded to a random but busy steady state (queues, tokens,
requests in flight, seeded). Each iteration submits one agent turn (hit 8K–64K tokens, append
100–900, output 50–300: agent-turn shapes), times both, then lets a random earlier request
finish so about four requests per engine stay in flight.
Targets (issue 5): p99 ≤ 50 µs at 64 engines and ≤ 200 µs at 1,024 for `dualpath-slo`.

    .venv/bin/python bench/scheduler_cost.py --out bench/results/scheduler_cost.json
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.overhead.machine import describe  # noqa: E402
from engines.engine_model import EngineModel  # noqa: E402
from gateway.scheduler.cluster_state import ClusterState  # noqa: E402
from gateway.scheduler.config import SchedulerConfig  # noqa: E402
from gateway.scheduler.policies import POLICIES  # noqa: E402
from gateway.scheduler.request import RequestId, SchedRequest  # noqa: E402
from gateway.scheduler.scheduler import Scheduler  # noqa: E402

TARGETS_US = {64: 50.0, 1024: 200.0}


def build(engines: int, policy: str, seed: int) -> tuple[Scheduler, random.Random]:
    rng = random.Random(seed)
    # Holding and shedding are not what is measured here: every request must be placed.
    config = SchedulerConfig(policy=policy, max_wait_s=1e12, admit_backlog_s=1e12, tpot_s=10.0)
    state = ClusterState(config)
    model = EngineModel.named("ds-v3.2-660b")
    for i in range(engines // 2):
        state.add_engine(f"p{i}", "prefill", model)
    for i in range(engines - engines // 2):
        state.add_engine(f"d{i}", "decode", model, kv_capacity_tokens=4_000_000)
    for e in state.engines.values():
        e.compute_free_at = rng.uniform(0, 2)
        e.node.snic_free_at = rng.uniform(0, 2)
        e.node.cnic_free_at = rng.uniform(0, 0.1)
    return Scheduler(state), rng


def turn(rng: random.Random, n: int, now: float) -> SchedRequest:
    return SchedRequest(
        rid=RequestId(f"r{n}"),
        hit_tokens=rng.randrange(8_000, 64_000, 64),
        append_tokens=rng.randint(100, 900),
        output_tokens=rng.randint(50, 300),
        arrival=now,
        ttft_target_s=4.0,
        tpot_target_s=10.0,
        session=f"s{rng.randrange(1000)}",
    )


def measure(engines: int, policy: str, iterations: int, seed: int) -> dict[str, Any]:
    sched, rng = build(engines, policy, seed)
    live: list[str] = []
    samples: list[float] = []
    placing: list[float] = []
    now = 0.0
    gc.disable()
    try:
        for n in range(iterations + 200):
            now += 0.001
            req = turn(rng, n, now)
            p0 = time.perf_counter_ns()
            sched.policy.place(req, sched.cluster, now)  # the decision alone, nothing booked
            p1 = time.perf_counter_ns()
            sched.submit(req, now)
            t0 = time.perf_counter_ns()
            decisions = sched.schedule(now)
            t1 = time.perf_counter_ns()
            assert [d.rid for d in decisions] == [req.rid], "every request must be placed"
            live.append(req.rid)
            if len(live) > 4 * engines:  # keep about four requests per engine in flight
                done = live.pop(rng.randrange(len(live)))
                sched.first_token(done, now)
                sched.finished(done, now, 100)
            if n >= 200:  # warm-up first
                samples.append((t1 - t0) / 1e3)
                placing.append((p1 - p0) / 1e3)
    finally:
        gc.enable()
    q = statistics.quantiles(samples, n=100, method="inclusive")
    qp = statistics.quantiles(placing, n=100, method="inclusive")
    return {
        "iterations": len(samples),
        "p50_us": round(q[49], 2),
        "p99_us": round(q[98], 2),
        "max_us": round(max(samples), 2),
        "mean_us": round(statistics.fmean(samples), 2),
        "place_only_p50_us": round(qp[49], 2),
        "place_only_p99_us": round(qp[98], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", default="8,64,1024")
    parser.add_argument("--policies", default=",".join(POLICIES))
    parser.add_argument("--iterations", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    results: dict[str, dict[str, Any]] = {}
    for policy in args.policies.split(","):
        results[policy] = {}
        for n in (int(x) for x in args.engines.split(",")):
            r = measure(n, policy, args.iterations, args.seed)
            target = TARGETS_US.get(n) if policy == "dualpath-slo" else None
            if target is not None:
                r["target_p99_us"] = target
                r["met"] = r["p99_us"] <= target
            results[policy][str(n)] = r
            print(
                f"{policy:>13} {n:>5} engines: p50 {r['p50_us']:8.1f} µs  p99 {r['p99_us']:8.1f} µs"
            )
    report = {
        "bench": "scheduler_cost",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": describe(REPO),
        "results": results,
    }
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
