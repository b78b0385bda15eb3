"""Soak: N concurrent streaming agents against `dualpath up` for a while; JSON out.

Each agent loops multi-turn chat sessions (`X-Session-ID`, streamed, usage included) against a
gateway in front of simulated PD workers. Recorded: requests, errors by kind, TTFT and E2E
p50/p99, the gateway's added latency per request (its `server-timing`, and its per-stage
histograms from `/metrics` as a cross-check), the gateway's RSS over time and its growth after
warm-up, every process's CPU, and the client's own CPU and loop lag (is the client the limit?).

`--kill-decode-at F` SIGKILLs decode worker 0 at F × duration, starts it again with the same
port and args `--restart-after` seconds later, and checks that every failed request was on that
worker (`x-dualpath-decode`). See bench/README.md.

    .venv/bin/python bench/soak.py --quick
    .venv/bin/python bench/soak.py                                  # 1,000 agents, 300 s
    .venv/bin/python bench/soak.py --kill-decode-at 0.5 --out bench/results/soak_kill.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from overhead import machine
from soakrun import report
from soakrun.agents import Load, LoadSpec, agent_loop, client_session
from soakrun.cluster import LauncherCluster, SoakCluster, UpCluster, free_port, plan_args, plan_of
from soakrun.sampler import Sampler

REPO = Path(__file__).resolve().parents[1]
KILLED = "decode-0"


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--agents", type=int, default=None, help="concurrent agents (1000; quick 100)")
    p.add_argument("--duration", type=float, default=None, help="seconds of load (300; quick 30)")
    p.add_argument(
        "--warmup", type=float, default=None, help="first seconds not measured (60; quick 10)"
    )
    p.add_argument("--quick", action="store_true", help="100 agents for 30 s")
    p.add_argument("--turns", type=int, default=6, help="turns per session")
    p.add_argument("--max-tokens", type=int, default=32, help="max_tokens per turn")
    p.add_argument(
        "--think",
        type=float,
        default=None,
        help="mean seconds an agent spends between turns (its tools), ±50%%; 0 = a closed "
        "loop (40; quick 5)",
    )
    p.add_argument("--ramp", type=float, default=None, help="agents start over this (warmup/2)")
    p.add_argument(
        "--time-scale",
        type=float,
        default=1.0,
        help="workers' simulated GPU time multiplier (1: the toy model's own speed)",
    )
    p.add_argument("--prefill", type=int, default=1)
    p.add_argument("--decode", type=int, default=2)
    p.add_argument("--kv", default="embedded", help="dualpath up --kv")
    p.add_argument("--policy", default=None, help="dualpath up --policy (default dualpath-slo)")
    p.add_argument(
        "--kill-decode-at",
        type=float,
        default=None,
        metavar="FRACTION",
        help="SIGKILL decode worker 0 at this fraction of the duration, then restart it",
    )
    p.add_argument("--restart-after", type=float, default=5.0, help="seconds it stays dead")
    p.add_argument("--sample-interval", type=float, default=None, help="RSS/CPU (5; quick 1)")
    p.add_argument("--drain-timeout", type=float, default=180.0, help="wait for the last turns")
    p.add_argument("--ready-timeout", type=float, default=120.0)
    p.add_argument("--out", type=Path, default=None, help="JSON (bench/results/soak*.json)")
    args = p.parse_args(argv)
    quick = args.quick
    args.agents = args.agents or (100 if quick else 1000)
    args.duration = args.duration or (30.0 if quick else 300.0)
    args.warmup = args.warmup if args.warmup is not None else (10.0 if quick else 60.0)
    args.ramp = args.ramp if args.ramp is not None else args.warmup / 2
    args.think = args.think if args.think is not None else (5.0 if quick else 40.0)
    args.sample_interval = args.sample_interval or (1.0 if quick else 5.0)
    if args.kill_decode_at is not None and not 0 < args.kill_decode_at < 1:
        p.error("--kill-decode-at is a fraction of the duration, in (0, 1)")
    if args.warmup >= args.duration:
        p.error("--warmup must be shorter than --duration")
    name = "soak" + ("_kill" if args.kill_decode_at is not None else "")
    name += "_quick" if quick else ""
    args.out = args.out or REPO / "bench" / "results" / f"{name}.json"
    return args


def _log(msg: str) -> None:
    print(f"[soak {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


async def _scrape(http: aiohttp.ClientSession, base: str) -> str:
    async with http.get(base + "/metrics") as r:
        return await r.text()


async def _kill_and_restart(
    cluster: LauncherCluster, args: argparse.Namespace, t0: float, marks: dict[str, float]
) -> None:
    await asyncio.sleep(max(t0 + args.duration * args.kill_decode_at - time.monotonic(), 0))
    await asyncio.to_thread(cluster.kill, KILLED)
    marks["kill_at"] = time.monotonic()
    _log(f"killed {KILLED}")
    await asyncio.sleep(args.restart_after)  # the outage: the gateway must route around it
    await asyncio.to_thread(cluster.restart, KILLED)
    marks["back_at"] = time.monotonic()
    _log(f"{KILLED} is back")


async def drive(args: argparse.Namespace, cluster: SoakCluster) -> dict[str, Any]:
    spec = LoadSpec(
        cluster.base, agents=args.agents, turns=args.turns, max_tokens=args.max_tokens,
        ramp_s=args.ramp, think_s=args.think,
    )  # fmt: skip
    load = Load(spec)
    marks: dict[str, float] = {}
    async with client_session(args.agents, spec.read_timeout_s) as http:
        sampler = Sampler(
            cluster.processes, lambda: load.in_flight, lambda: len(load.samples),
            args.sample_interval,
        )  # fmt: skip
        t0 = sampler.t0
        sampling = asyncio.create_task(sampler.run())
        agents = [asyncio.create_task(agent_loop(http, load, i)) for i in range(args.agents)]
        killing = None
        if args.kill_decode_at is not None:
            assert isinstance(cluster, LauncherCluster)
            killing = asyncio.create_task(_kill_and_restart(cluster, args, t0, marks))
        await asyncio.sleep(args.warmup)
        warm_metrics = await _scrape(http, cluster.base)
        _log(f"warm-up over: {len(load.samples)} turns, {load.in_flight} in flight")
        await asyncio.sleep(max(t0 + args.duration - time.monotonic(), 0))
        load.stopping = True
        marks["stop_at"] = time.monotonic()
        _log(f"stopping: {len(load.samples)} turns, draining {load.in_flight} in flight")
        # Turns in flight finish; agents thinking between turns are simply stopped.
        if load.in_flight:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(load.idle.wait(), args.drain_timeout)
        for task in agents:
            task.cancel()
        await asyncio.gather(*agents, return_exceptions=True)
        if killing is not None:
            await killing
        end_metrics = await _scrape(http, cluster.base)
        async with http.get(cluster.base + "/debug/decisions", params={"limit": "1"}) as r:
            marks_probe = (await r.json()).get("hit_probe") if r.status == 200 else None
        sampler.sample()
        sampling.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampling
    results = _results(args, cluster, load, sampler, marks, t0, warm_metrics, end_metrics)
    results["hit_probe"] = marks_probe
    results["loadavg_at_end"] = machine.loadavg()
    return results


def _results(
    args: argparse.Namespace,
    cluster: SoakCluster,
    load: Load,
    sampler: Sampler,
    marks: dict[str, float],
    t0: float,
    warm_metrics: str,
    end_metrics: str,
) -> dict[str, Any]:
    samples = load.samples
    measured = [s for s in samples if s.started >= t0 + args.warmup]
    cores = report.cpu_cores(sampler.points, args.warmup)
    lag_p99 = report.pct(sampler.lags, 0.99) or 0.0
    out: dict[str, Any] = {
        "requests": {
            "total": len(samples),
            "measured": len(measured),
            "unfinished_at_drain": load.in_flight,
            "per_s_measured": round(len(measured) / (marks["stop_at"] - t0 - args.warmup), 2),
        },
        "errors": report.errors(samples),
        "errors_measured": report.errors(measured),
        "latency_measured": report.latency(measured),
        "gateway_stages_measured": report.stage_quantiles(warm_metrics, end_metrics),
        "sheds_total": report.sheds(end_metrics),
        "gateway_rss": report.rss(sampler.points, "gateway", args.warmup),
        "cpu_cores_after_warmup": cores,
        "cpu_cores_ours_total": round(sum(cores.values()), 3),
        "machine_cpu_busy_after_warmup": report.machine_busy(sampler.points, args.warmup),
        "client": {
            "cpu_cores": cores.get("client"),
            "loop_lag_p99_ms": round(lag_p99 * 1e3, 2),
            "loop_lag_max_ms": round(max(sampler.lags, default=0.0) * 1e3, 2),
            "saturated": (cores.get("client") or 0) > 0.85 or lag_p99 > 0.1,
        },
        "samples": [vars_of(p) for p in sampler.points],
    }
    if "kill_at" in marks:
        killed = next(p for p in cluster.processes() if p.name == KILLED)
        from engines.worker_registry import Worker

        killed_id = Worker(url=killed.url or "", role="decode").id
        check = report.kill_check(samples, killed_id, marks["kill_at"], marks["back_at"])
        check["kill_at_s"] = round(marks["kill_at"] - t0, 2)
        check["back_at_s"] = round(marks["back_at"] - t0, 2)
        out["kill"] = check
    return out


def vars_of(point: Any) -> dict[str, Any]:
    return {k: getattr(point, k) for k in point.__slots__}


def targets(results: dict[str, Any], kill: bool) -> list[dict[str, Any]]:
    rss = results["gateway_rss"]
    out = [
        {
            "name": "gateway_rss_growth_after_warmup_mb",
            "value": rss.get("growth_after_warmup_mb"),
            "threshold": report.RSS_GROWTH_TARGET_MB,
            "passed": rss.get("passed"),
        }
    ]
    if kill:
        out.append(
            {
                "name": "only_streams_on_the_killed_worker_fail",
                "value": results["kill"]["failed_on_other_workers"]
                + results["kill"]["failed_without_worker_header"],
                "threshold": 0,
                "passed": results["kill"]["only_killed_worker_streams_failed"],
            }
        )
    else:
        errors = results["errors"]["total"]
        out.append({"name": "errors", "value": errors, "threshold": 0, "passed": errors == 0})
    return out


NOTES = [
    "added_* latency = the gateway's own time per request before it dispatches to the workers "
    "(parse, session, KV look-up, scheduling, minus the scheduler's deliberate hold, reported "
    "as queue_wait_*), read from each response's `server-timing: gateway;dur=…` header. It "
    "excludes the per-chunk relay cost of the stream, which no per-request header can carry; "
    "gateway_stages_measured gives the same stages from /metrics histograms (bucket-interpolated).",
    "PD has no direct-to-worker baseline for the same request (the gateway is the PD router), "
    "so TTFT/E2E here are end-to-end under the simulated workers' time scale, not overhead.",
    "Errors count every failed turn of the whole run, warm-up included; latency figures cover "
    "turns started after warm-up.",
    "RSS growth = the gateway's VmRSS at the last sample minus the first sample after warm-up.",
    "cpu_cores_after_warmup: utime+stime per process over the measured window; on 2 cores "
    "the client, gateway and workers share them, so a saturated machine shows in all latencies.",
]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv if argv is None else argv
    args = parse_args(argv[1:])
    started_at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    desc = machine.describe(REPO)
    port = free_port()
    kill = args.kill_decode_at is not None
    _log(f"starting the cluster ({'launcher' if kill else 'dualpath up'}) on port {port}")
    cluster: SoakCluster
    if kill:
        cluster = LauncherCluster(plan_of(args, port), args.ready_timeout)
    else:
        workdir = Path(tempfile.mkdtemp(prefix="dualpath-soak-"))
        cluster = UpCluster(plan_args(args), port, workdir, args.ready_timeout)
    try:
        _log(f"ready: {[p.name for p in cluster.processes()]}; {args.agents} agents")
        try:
            import uvloop

            results = uvloop.run(drive(args, cluster))
        except ImportError:
            results = asyncio.run(drive(args, cluster))
    finally:
        cluster.stop()
    doc = {
        "schema": "dualpath.bench.soak/1",
        "command": shlex.join([sys.executable, *argv]),
        "started_at": started_at,
        "finished_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": desc,
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "system_under_test": {
            "launcher": type(cluster).__name__,
            "command": cluster.command,
            "logs": str(cluster.workdir),
        },
        "notes": NOTES,
        "targets": targets(results, kill),
        **results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    _log(f"wrote {args.out}")
    summary = {t["name"]: (t["value"], t["passed"]) for t in doc["targets"]}
    _log(f"targets: {summary}; latency: {results['latency_measured']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
