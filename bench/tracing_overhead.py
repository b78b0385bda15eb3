"""Tracing overhead: the gateway with tracing on (OTLP/HTTP to a local receiver) against the
same gateway with tracing off, in one run, points interleaved.

Starts the fake prefill and decode workers of `bench/gateway_overhead.py`, a real OTLP/HTTP
receiver (`tests/support/otlp_receiver.py`, its own process) and two `dualpath serve` gateways in
front of the same workers: `gateway` (no `OTEL_*`: tracing off, the default) and `gateway-traced`
(`OTEL_TRACES_EXPORTER=otlp`, `http/protobuf` to the receiver, default `OTEL_BSP_*` batching). Each
point drives one of them with the pinned closed-loop streaming client; the two alternate at every
(repeat, concurrency, client), their order flipped each repeat. Target (issue 7): tracing adds at
most 5% to the E2E p50. Writes one JSON file and prints a table. See bench/README.md.

    .venv/bin/python bench/tracing_overhead.py --out bench/results/tracing_overhead.json
    .venv/bin/python bench/tracing_overhead.py --quick
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import shlex
import statistics
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from overhead import machine, report, runner, targets
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.table import Table

OFF, ON = "gateway", "gateway-traced"
CLIENTS = ("plain", "quickack")
TARGET_ADDED_P50 = 0.05
"""At most 5% added E2E p50 with tracing on (issue 7)."""


def _csv(kind: type) -> object:
    return lambda text: [kind(x) for x in text.split(",") if x]


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--out", type=Path, default=Path("tracing_overhead.json"), help="JSON file")
    p.add_argument("--clients", type=_csv(str), default=["quickack"], help="plain,quickack")
    p.add_argument("--concurrency", type=_csv(int), default=None, help="default 1,16")
    p.add_argument("--duration", type=float, default=None, help="seconds per point (default 6)")
    p.add_argument("--warmup", type=float, default=None, help="unmeasured seconds (default 1)")
    p.add_argument("--repeats", type=int, default=None, help="runs per point (default 3)")
    p.add_argument("--quick", action="store_true", help="2 s points, 1 repeat, C=1")
    p.add_argument(
        "--sampling",
        type=_csv(float),
        default=[1.0],
        help="traced gateways, one per ratio (1: every request; else parentbased_traceidratio)",
    )
    p.add_argument("--tokens", type=int, default=16, help="content events per decode stream")
    p.add_argument("--no-pin", action="store_true", help="let the OS schedule everything")
    p.add_argument("--ready-timeout", type=float, default=60.0)
    p.add_argument("--logdir", type=Path, default=None, help="process logs (default: a tmp dir)")
    p.add_argument("--no-table", action="store_true", help="do not print the table")
    args = p.parse_args(argv)
    q = args.quick
    args.concurrency = args.concurrency or ([1] if q else [1, 16])
    args.duration = args.duration if args.duration is not None else (2.0 if q else 6.0)
    args.warmup = args.warmup if args.warmup is not None else (0.5 if q else 1.0)
    args.repeats = args.repeats if args.repeats is not None else (1 if q else 3)
    for name in args.clients:
        if name not in CLIENTS:
            p.error(f"unknown client {name!r}; choose from {', '.join(CLIENTS)}")
    if not args.sampling or any(not 0 < r <= 1 for r in args.sampling):
        p.error("--sampling ratios must be in (0, 1]")
    args.systems = [OFF, *(traced_name(r) for r in args.sampling)]
    allowed = sorted(os.sched_getaffinity(0))
    if args.no_pin or len(allowed) < 2:
        args.client_cpu, args.sut_cpus = None, None
    else:  # as gateway_overhead: the client on one core, the SUTs and fake workers on another
        args.client_cpu, args.sut_cpus = allowed[0], [allowed[1]]
    return args


def traced_name(ratio: float) -> str:
    return ON if ratio == 1 else f"{ON}-{ratio:g}"


def traced_env(endpoint: str, ratio: float = 1.0) -> dict[str, str]:
    env = {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_SERVICE_NAME": "dualpath-gateway-bench",
    }
    if ratio < 1:
        env["OTEL_TRACES_SAMPLER"] = "parentbased_traceidratio"
        env["OTEL_TRACES_SAMPLER_ARG"] = f"{ratio:g}"
    return env


def _untraced_env() -> dict[str, str]:
    # Off is the default (no OTEL_*); if this shell sets some, they are overridden for `gateway`.
    return {"OTEL_SDK_DISABLED": "true"} if any(k.startswith("OTEL_") for k in os.environ) else {}


@contextlib.contextmanager
def systems(
    args: argparse.Namespace, received: dict[str, object]
) -> Iterator[dict[str, targets.Target]]:
    """Start the receiver, the fake workers and the gateways; stop them all on exit, the
    gateways first (flushing their spans), then fill `received` with the receiver's count."""
    cpus = set(args.sut_cpus) if args.sut_cpus else None
    port = targets.free_port()
    # The receiver stands for a collector, which is no more the gateway than the client is: it
    # shares the client's core, not the gateway's.
    receiver = targets.spawn(
        [sys.executable, "-m", "tests.support.otlp_receiver", "--port", str(port)],
        {args.client_cpu} if args.client_cpu is not None else None,
        args.logdir / "otlp-receiver.log",
    )
    endpoint = f"http://127.0.0.1:{port}"
    workers = None
    started: dict[str, targets.Target] = {}
    try:
        targets.wait_ready(endpoint + "/_stats", receiver, 30)
        workers = targets.start_workers(cpus, args.logdir, args.tokens, False)
        gateways = [(OFF, _untraced_env())]
        gateways += [(traced_name(r), traced_env(endpoint, r)) for r in args.sampling]
        for name, env in gateways:
            _log(f"starting {name}")
            started[name] = targets.gateway(
                workers, cpus, args.logdir, args.ready_timeout, name=name, env=env
            )
            if started[name].skipped:
                raise RuntimeError(f"{name} did not start: {started[name].skipped}")
        yield started
    finally:
        shipped = {}
        for name, t in started.items():
            if name != OFF and t.port:
                with contextlib.suppress(OSError, ValueError):
                    shipped[name] = span_counts(t.port)
        for t in started.values():
            for proc in t.procs:
                targets.stop(proc)
        with contextlib.suppress(OSError):
            received.update(receiver_stats(endpoint))
        # Every span a gateway shipped should arrive: the receiver's count against these.
        received["gateway_spans"] = shipped
        if workers is not None:
            targets.stop(workers.prefill)
            targets.stop(workers.decode)
        targets.stop(receiver)


def run_all(args: argparse.Namespace, live: dict[str, targets.Target]) -> list[report.Record]:
    timing = runner.Timing(args.duration, args.warmup, args.client_cpu)
    records: list[report.Record] = []
    for repeat in range(args.repeats):
        order = args.systems if repeat % 2 == 0 else args.systems[::-1]
        for conc in args.concurrency:
            for client in args.clients:
                for name in order:
                    spec = runner.PointSpec(name, client, conc, repeat)
                    result = runner.run_point(spec, live[name], timing)
                    point = {"system": name, "client": client, "concurrency": conc}
                    records.append({**point, "repeat": repeat, **result})
                    _log(_progress(records[-1]))
    return records


def _progress(r: report.Record) -> str:
    head = f"  {r['system']:<15} {r['client']:<8} C={r['concurrency']:<4} #{r['repeat']}"
    if "error" in r:
        return f"{head} ERROR {str(r['error'])[:200]}"
    return (
        f"{head} {r['rps']:8.0f} req/s  e2e p50 {r['e2e_p50_ms'] or 0:7.3f} ms  "
        f"cpu/req {r['sut_cpu_ms_per_req'] or 0:.3f} ms"
    )


def _pct(on: object, off: object) -> float | None:
    if isinstance(on, int | float) and isinstance(off, int | float) and off:
        return (float(on) - float(off)) / float(off)
    return None


def paired(records: list[report.Record], field: str) -> dict[report.Key, float]:
    """Per (client, concurrency, traced system): the median over repeats of on ÷ off − 1 for
    `field`, each traced point against the untraced point of its own repeat. On a shared
    machine a burst of someone else's work spoils a whole repeat; pairing within the repeat keeps
    it from deciding the comparison."""
    by_point: dict[tuple[str, int, str, int], float] = {}
    for r in records:
        value = r.get(field)
        if "error" not in r and isinstance(value, int | float):
            key = (str(r["client"]), int(r["concurrency"]), str(r["system"]), int(r["repeat"]))  # type: ignore[call-overload]
            by_point[key] = float(value)
    ratios: dict[report.Key, list[float]] = {}
    for (client, conc, system, repeat), on in by_point.items():
        off = by_point.get((client, conc, OFF, repeat))
        if system != OFF and off:
            ratios.setdefault((client, conc, system), []).append(on / off - 1)
    return {key: statistics.median(values) for key, values in ratios.items()}


def compare(
    agg: dict[report.Key, report.Record], records: list[report.Record]
) -> list[report.Record]:
    """Tracing on against off at each (client, concurrency): added latency and CPU. The target
    is judged on the paired E2E p50 (`paired`); the medians' difference is shown beside it."""
    rows: list[report.Record] = []
    e2e, cpu = paired(records, "e2e_p50_ms"), paired(records, "sut_cpu_ms_per_req")
    for (client, conc, system), on in sorted(agg.items()):
        off = agg.get((client, conc, OFF))
        if system == OFF or off is None:
            continue
        added = e2e.get((client, conc, system))
        rows.append(
            {
                "system": system,
                "client": client,
                "concurrency": conc,
                "e2e_p50_ms_off": off["e2e_p50_ms"],
                "e2e_p50_ms_on": on["e2e_p50_ms"],
                "added_e2e_p50_ms": _diff(on["e2e_p50_ms"], off["e2e_p50_ms"]),
                "added_e2e_p50_fraction": added,
                "added_e2e_p50_fraction_of_medians": _pct(on["e2e_p50_ms"], off["e2e_p50_ms"]),
                "added_sut_cpu_fraction": cpu.get((client, conc, system)),
                "added_ttft_p50_fraction": _pct(on["ttft_p50_ms"], off["ttft_p50_ms"]),
                "added_e2e_p99_fraction": _pct(on["e2e_p99_ms"], off["e2e_p99_ms"]),
                "rps_ratio": _ratio(on["rps"], off["rps"]),
                "sut_cpu_ms_per_req_off": off["sut_cpu_ms_per_req"],
                "sut_cpu_ms_per_req_on": on["sut_cpu_ms_per_req"],
                "added_sut_cpu_ms_per_req": _diff(
                    on["sut_cpu_ms_per_req"], off["sut_cpu_ms_per_req"]
                ),
                "target_added_e2e_p50_fraction": TARGET_ADDED_P50,
                "passed": None if added is None else added <= TARGET_ADDED_P50,
            }
        )
    return rows


def _diff(a: object, b: object) -> float | None:
    ok = isinstance(a, int | float) and isinstance(b, int | float)
    return float(a) - float(b) if ok else None  # type: ignore[arg-type]


def _ratio(a: object, b: object) -> float | None:
    ok = isinstance(a, int | float) and isinstance(b, int | float) and b
    return float(a) / float(b) if ok else None  # type: ignore[arg-type]


def span_counts(port: int) -> dict[str, float]:
    """A gateway's `dualpath_trace_spans` by outcome (shipped, dropped), from its /metrics."""
    url = f"http://127.0.0.1:{port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as r:
        text = r.read().decode()
    return {
        sample.labels["outcome"]: sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "dualpath_trace_spans"
        for sample in family.samples
        if sample.name == "dualpath_trace_spans_total"
    }


def receiver_stats(endpoint: str) -> dict[str, object]:
    with urllib.request.urlopen(endpoint + "/_stats", timeout=5) as r:
        stats: dict[str, object] = json.loads(r.read())
    return stats


NOTES = [
    "added_* = gateway-traced minus gateway (same client, concurrency and run); fractions are of "
    "the untraced figure. added_e2e_p50_fraction (the target's figure) and "
    "added_sut_cpu_fraction are medians over repeats of each repeat's traced/untraced ratio; "
    "added_e2e_p50_fraction_of_medians compares the medians instead.",
    "Both gateways run the whole time in front of the same fake workers, pinned with them to the "
    "SUT CPU; only the one being measured gets load. The receiver (a collector's stand-in, "
    "keep-alive) is its own process, pinned with the client to the client's CPU.",
    "gateway-traced exports every request's spans (request, session.identify, schedule, prefill, "
    "decode; no KV store, so no kv.lookup) with the default OTEL_BSP_* batching; "
    "gateway-traced-R samples a fraction R of the requests (parentbased_traceidratio).",
    "receiver.spans counts every span that arrived, warm-up included (the gateways flush what "
    "they hold when they stop, before the count is read). receiver.gateway_spans: each traced "
    "gateway's dualpath_trace_spans (shipped to its export process, or dropped) just before it "
    "stopped; with nothing lost on the way, receiver.spans equals the shipped total.",
]


def build_report(
    args: argparse.Namespace,
    argv: list[str],
    live: dict[str, targets.Target],
    records: list[report.Record],
    started_at: str,
    receiver: dict[str, object],
) -> report.Record:
    agg = report.aggregate(records)
    completed = sum(int(r.get("completed", 0)) for r in records if r["system"] != OFF)  # type: ignore[call-overload]
    return {
        "schema": "dualpath.bench.tracing_overhead/1",
        "command": shlex.join([sys.executable, *argv]),
        "started_at": started_at,
        "finished_at": _now(),
        "machine": machine.describe(targets.REPO),
        "config": {
            "clients": args.clients,
            "concurrency": args.concurrency,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "repeats": args.repeats,
            "tokens_per_stream": args.tokens,
            "request_body": json.loads(runner.REQUEST_BODY),
            "client_cpu": args.client_cpu,
            "sut_cpus": args.sut_cpus,
            "sampling": args.sampling,
            "traced_env": traced_env("http://127.0.0.1:PORT"),
            "logdir": str(args.logdir),
        },
        "systems": {n: {"command": t.command} for n, t in live.items()},
        "receiver": {**receiver, "traced_requests_measured": completed},
        "notes": NOTES,
        "runs": records,
        "results": [agg[k] for k in sorted(agg)],
        "comparisons": compare(agg, records),
    }


def print_table(result: report.Record) -> None:
    table = Table(title="tracing on vs off (medians over repeats; added: paired per repeat)")
    columns = ("system", "client", "C", "E2E p50 off → on ms", "added E2E p50", "CPU ms/req")
    for col in (*columns, "added CPU", "req/s ×", "≤5%"):
        table.add_column(col, justify="left" if col in ("system", "client") else "right")

    def pct(value: object) -> str:
        return f"{100 * value:+.1f}%" if isinstance(value, int | float) else "–"

    for c in result["comparisons"]:  # type: ignore[attr-defined]
        table.add_row(
            str(c["system"]),
            str(c["client"]),
            str(c["concurrency"]),
            f"{c['e2e_p50_ms_off']:.3f} → {c['e2e_p50_ms_on']:.3f}",
            pct(c["added_e2e_p50_fraction"]),
            f"{c['sut_cpu_ms_per_req_off'] or 0:.3f} → {c['sut_cpu_ms_per_req_on'] or 0:.3f}",
            pct(c["added_sut_cpu_fraction"]),
            f"{c['rps_ratio'] or 0:.3f}",
            {True: "yes", False: "NO", None: "–"}[c["passed"]],
        )
    Console(width=150).print(table)


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv if argv is None else argv
    args = parse_args(argv[1:])
    args.logdir = args.logdir or Path(tempfile.mkdtemp(prefix="tracing-overhead-"))
    args.logdir.mkdir(parents=True, exist_ok=True)
    started_at = _now()
    received: dict[str, object] = {}
    with systems(args, received) as live:
        records = run_all(args, live)
    result = build_report(args, argv, live, records, started_at, received)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    if not args.no_table:
        print_table(result)
    spans = received.get("gateway_spans") or {}
    shipped = sum(c.get("shipped", 0) for c in spans.values())  # type: ignore[union-attr]
    dropped = sum(c.get("dropped", 0) for c in spans.values())  # type: ignore[union-attr]
    _log(f"spans: shipped {shipped:.0f}, dropped {dropped:.0f}, received {received.get('spans')}")
    _log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
