"""Gateway overhead: the gateway against direct-to-decode and sglang-router, in one run.

Starts one fake prefill and one fake decode worker, then each system under test (``direct``,
``router``, ``gateway``), and drives each with a pinned closed-loop streaming client at every
concurrency, with an ordinary keep-alive client and a quick-ACK one. Points are interleaved
(all systems back to back at each concurrency and client) so that the machine's drift hits them
alike. Writes one JSON file and prints the tables. See bench/README.md.

    .venv/bin/python bench/gateway_overhead.py --out gateway_overhead.json
    .venv/bin/python bench/gateway_overhead.py --quick --targets direct,router
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import shlex
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from overhead import machine, report, runner, table, targets

SYSTEMS = ("direct", "router", "gateway")
CLIENTS = ("plain", "quickack")


def _csv(kind: type) -> object:
    return lambda text: [kind(x) for x in text.split(",") if x]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--out", type=Path, default=Path("gateway_overhead.json"), help="JSON file")
    p.add_argument(
        "--targets",
        type=_csv(str),
        default=list(SYSTEMS),
        help="systems under test, comma-separated: direct,router,gateway",
    )
    p.add_argument("--clients", type=_csv(str), default=list(CLIENTS), help="plain,quickack")
    p.add_argument(
        "--concurrency",
        type=_csv(int),
        default=None,
        help="concurrent streams (default 1,64,512; with --quick 1,64)",
    )
    p.add_argument(
        "--duration",
        type=float,
        default=None,
        help="measured seconds per point (default 8; with --quick 2)",
    )
    p.add_argument(
        "--warmup",
        type=float,
        default=None,
        help="unmeasured seconds of load before each point (default 1; --quick 0.5)",
    )
    p.add_argument("--repeats", type=int, default=1, help="runs per point; medians are reported")
    p.add_argument("--quick", action="store_true", help="short points, concurrency 1,64 only")
    p.add_argument("--tokens", type=int, default=16, help="content events per decode stream")
    p.add_argument(
        "--coalesce",
        action="store_true",
        help="fake workers send a whole stream in one write (default: one per event)",
    )
    p.add_argument("--client-cpu", type=int, default=None, help="CPU for the client process")
    p.add_argument(
        "--sut-cpus", type=_csv(int), default=None, help="CPUs for the SUT and the fake workers"
    )
    p.add_argument("--no-pin", action="store_true", help="let the OS schedule everything")
    p.add_argument("--ready-timeout", type=float, default=60.0, help="seconds to become ready")
    p.add_argument("--logdir", type=Path, default=None, help="process logs (default: a tmp dir)")
    p.add_argument("--no-table", action="store_true", help="do not print the tables")
    args = p.parse_args(argv)
    _resolve_defaults(args, p)
    return args


def _resolve_defaults(args: argparse.Namespace, p: argparse.ArgumentParser) -> None:
    quick = args.quick
    args.concurrency = args.concurrency or ([1, 64] if quick else [1, 64, 512])
    args.duration = args.duration if args.duration is not None else (2.0 if quick else 8.0)
    args.warmup = args.warmup if args.warmup is not None else (0.5 if quick else 1.0)
    for name in args.targets:
        if name not in SYSTEMS:
            p.error(f"unknown target {name!r}; choose from {', '.join(SYSTEMS)}")
    for name in args.clients:
        if name not in CLIENTS:
            p.error(f"unknown client {name!r}; choose from {', '.join(CLIENTS)}")
    allowed = sorted(os.sched_getaffinity(0))
    if args.no_pin or len(allowed) < 2:
        args.client_cpu, args.sut_cpus = None, None
        args.pinning = "none" if args.no_pin else "none (fewer than 2 CPUs allowed)"
        return
    # Like router-bench: client on one core, SUT + fake workers together on another.
    args.client_cpu = allowed[0] if args.client_cpu is None else args.client_cpu
    args.sut_cpus = args.sut_cpus or [c for c in allowed if c != args.client_cpu][:1]
    args.pinning = "client and SUT on separate CPUs; fake workers share the SUT's CPUs"


@contextlib.contextmanager
def systems(args: argparse.Namespace) -> Iterator[dict[str, targets.Target]]:
    """Start the fake workers and every requested system; stop them all on exit."""
    cpus = set(args.sut_cpus) if args.sut_cpus else None
    workers = targets.start_workers(cpus, args.logdir, args.tokens, args.coalesce)
    started: dict[str, targets.Target] = {}
    try:
        for name in args.targets:
            _log(f"starting {name}")
            if name == "direct":
                started[name] = targets.direct(workers)
            elif name == "router":
                started[name] = targets.router(workers, cpus, args.logdir, args.ready_timeout)
            else:
                started[name] = targets.gateway(workers, cpus, args.logdir, args.ready_timeout)
            if started[name].skipped:
                _log(f"  skipped: {started[name].skipped[:200]}")
        yield started
    finally:
        for t in started.values():
            for proc in t.procs:
                targets.stop(proc)
        targets.stop(workers.prefill)
        targets.stop(workers.decode)


def run_all(args: argparse.Namespace, live: dict[str, targets.Target]) -> list[report.Record]:
    timing = runner.Timing(args.duration, args.warmup, args.client_cpu)
    records: list[report.Record] = []
    for repeat in range(args.repeats):
        for conc in args.concurrency:
            for client in args.clients:
                for name, target in live.items():
                    if target.skipped:
                        continue
                    spec = runner.PointSpec(name, client, conc, repeat)
                    result = runner.run_point(spec, target, timing)
                    records.append(
                        {
                            "system": name,
                            "client": client,
                            "concurrency": conc,
                            "repeat": repeat,
                            **result,
                        }
                    )
                    _log(_progress(records[-1]))
    return records


def _progress(r: report.Record) -> str:
    head = f"  {r['system']:<8} {r['client']:<8} C={r['concurrency']:<4} #{r['repeat']}"
    if "error" in r:
        return f"{head} ERROR {str(r['error'])[:200]}"
    return (
        f"{head} {r['rps']:9.0f} req/s  e2e p50 {r['e2e_p50_ms'] or 0:8.3f} ms  "
        f"cpu/req {r['sut_cpu_ms_per_req'] or 0:.3f} ms"
    )


def build_report(
    args: argparse.Namespace,
    argv: list[str],
    live: dict[str, targets.Target],
    records: list[report.Record],
    started_at: str,
) -> report.Record:
    agg = report.aggregate(records)
    skipped = {n: t.skipped for n, t in live.items() if t.skipped}
    return {
        "schema": "dualpath.bench.gateway_overhead/1",
        "command": shlex.join([sys.executable, *argv]),
        "started_at": started_at,
        "finished_at": _now(),
        "machine": machine.describe(targets.REPO),
        "config": {
            "systems": args.targets,
            "clients": args.clients,
            "concurrency": args.concurrency,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "repeats": args.repeats,
            "tokens_per_stream": args.tokens,
            "worker_writes": "one per stream" if args.coalesce else "one per SSE event",
            "request_body": json.loads(runner.REQUEST_BODY),
            "client_cpu": args.client_cpu,
            "sut_cpus": args.sut_cpus,
            "pinning": args.pinning,
            "logdir": str(args.logdir),
        },
        "systems": {n: {"command": t.command, "skipped": t.skipped} for n, t in live.items()},
        "notes": NOTES,
        "runs": records,
        "results": [agg[k] for k in sorted(agg)],
        "comparisons": report.compare(agg),
        "targets": report.evaluate(agg, skipped),
    }


NOTES = [
    "added_* = system minus direct (same client, same concurrency, same run).",
    "SUT CPU comes from /proc/<pid>/stat (utime+stime, all threads, live descendants) over the "
    "client's measured window; for direct the SUT is the fake decode worker.",
    "The fake prefill and decode run on the SUT's CPU(s) and are shared by router and gateway; "
    "their CPU is reported separately as workers_cpu_ms_per_req.",
    "At 64 and 512 streams every system is CPU-bound in a closed loop, so added latency there is "
    "mostly queueing; compare req/s and CPU per request.",
    "CPU ticks are 1/SC_CLK_TCK s, so CPU figures of sub-second points are coarse.",
]


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv if argv is None else argv
    args = parse_args(argv[1:])
    args.logdir = args.logdir or Path(tempfile.mkdtemp(prefix="gateway-overhead-"))
    args.logdir.mkdir(parents=True, exist_ok=True)
    started_at = _now()
    with systems(args) as live:
        records = run_all(args, live)
        result = build_report(args, argv, live, records, started_at)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    if not args.no_table:
        table.print_report(result)
    _log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
