"""One measured point: a pinned client process against one target, summarised."""

from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from .targets import Target, peak_rss_mb

CLIENT = Path(__file__).resolve().parent / "client.py"

# A streamed chat turn with usage, as an agent framework sends it.
REQUEST_BODY = json.dumps(
    {
        "model": "fake-model",
        "messages": [{"role": "user", "content": "Say hello."}],
        "max_tokens": 16,
        "stream": True,
        "stream_options": {"include_usage": True},
    },
    separators=(",", ":"),
)


@dataclass(frozen=True, slots=True)
class PointSpec:
    target: str
    client: str  # "plain" | "quickack"
    concurrency: int
    repeat: int


@dataclass(frozen=True, slots=True)
class Timing:
    duration: float
    warmup: float
    client_cpu: int | None


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile of an already sorted list (None when empty)."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[rank - 1]


def _ms(value: float | None) -> float | None:
    return None if value is None else value * 1e3


def summarise(raw: dict[str, object], target: Target) -> dict[str, object]:
    """Turn the client's raw window into the per-point figures the report uses."""
    n = int(raw["completed"])  # type: ignore[arg-type]
    elapsed = float(raw["elapsed_s"])  # type: ignore[arg-type]
    ttft = sorted(raw["ttft_s"])  # type: ignore[type-var]
    e2e = sorted(raw["e2e_s"])  # type: ignore[type-var]
    sut_cpu = float(raw["sut_cpu_s"])  # type: ignore[arg-type]
    workers_cpu = float(raw["workers_cpu_s"])  # type: ignore[arg-type]
    return {
        "completed": n,
        "elapsed_s": round(elapsed, 4),
        "rps": n / elapsed if elapsed else 0.0,
        "ttft_p50_ms": _ms(percentile(ttft, 0.50)),
        "ttft_p99_ms": _ms(percentile(ttft, 0.99)),
        "e2e_p50_ms": _ms(percentile(e2e, 0.50)),
        "e2e_p99_ms": _ms(percentile(e2e, 0.99)),
        "e2e_mean_ms": _ms(statistics.fmean(e2e)) if e2e else None,
        "sut_cpu_cores": sut_cpu / elapsed if elapsed else None,
        "sut_cpu_ms_per_req": sut_cpu / n * 1e3 if n else None,
        "workers_cpu_ms_per_req": workers_cpu / n * 1e3 if n else None,
        "client_cpu_cores": float(raw["client_cpu_s"]) / elapsed if elapsed else None,  # type: ignore[arg-type]
        "sut_peak_rss_mb": peak_rss_mb(target.sut_pids()),
        "errors": {k: raw[k] for k in ("bad_status", "conn_errors", "no_done")},
    }


def client_command(spec: PointSpec, target: Target, timing: Timing) -> list[str]:
    cmd = [
        sys.executable,
        str(CLIENT),
        "--port",
        str(target.port),
        "--body",
        REQUEST_BODY,
        "--concurrency",
        str(spec.concurrency),
        "--mode",
        spec.client,
        "--duration",
        str(timing.duration),
        "--warmup",
        str(timing.warmup),
        "--sut-pids",
        ",".join(map(str, target.sut_pids())),
        "--worker-pids",
        ",".join(map(str, target.worker_pids())),
    ]
    if timing.client_cpu is not None:
        cmd += ["--cpu", str(timing.client_cpu)]
    return cmd


def run_point(spec: PointSpec, target: Target, timing: Timing) -> dict[str, object]:
    """Run the client once; a failed client becomes an ``error`` entry, not an exception."""
    limit = timing.warmup + timing.duration + 60
    try:
        proc = subprocess.run(
            client_command(spec, target, timing), capture_output=True, timeout=limit, check=False
        )
    except subprocess.TimeoutExpired:
        return {"error": f"client did not finish within {limit:.0f}s"}
    if proc.returncode != 0:
        return {"error": proc.stderr.decode(errors="replace")[-600:]}
    return summarise(json.loads(proc.stdout), target)
