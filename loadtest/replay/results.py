"""A replay's outputs: `results.json` and the report folder.

`results.json` holds the command and the machine (so a figure can be traced to how it was made),
the config, `summarize`'s figures plus inter-token latency, every agent's outcome and JCT, the
most common errors, the binned time series, and the server's storage-NIC counters and read-path
counts when it gave them. `samples.jsonl` has one line per request (a `RequestSample` and its
ITL summary), in completion order. The report (`loadtest.report`) goes beside them.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import os
import platform
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from loadtest.metrics import percentile, summarize
from loadtest.replay.runner import ReplayResult
from loadtest.report.render import Report, write_report
from loadtest.report.series import time_series
from loadtest.trace import Trace

RESULTS = "results.json"
SAMPLES = "samples.jsonl"
TOP_ERRORS = 20


def machine() -> dict[str, Any]:
    try:
        version = importlib.metadata.version("dualpath-gateway")
    except importlib.metadata.PackageNotFoundError:
        version = None
    return {
        "host": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "dualpath_gateway": version,
    }


def _dist(values: Sequence[float]) -> dict[str, float | None]:
    return {
        "mean": sum(values) / len(values) if values else None,
        "p50": percentile(values, 0.5),
        "p99": percentile(values, 0.99),
        "max": max(values) if values else None,
    }


def results_json(
    result: ReplayResult, trace: Trace, command: Sequence[str], trace_path: str | None
) -> dict[str, Any]:
    c = result.config
    summary = summarize(result.samples, c.slo)
    itl = [i for i in result.itl if i is not None]
    summary["itl_s"] = {
        "per_request_mean": _dist([i.mean_s for i in itl]),
        "per_request_p99": _dist([i.p99_s for i in itl]),
        "per_request_max": _dist([i.max_s for i in itl]),
    }
    jcts = [j for a in result.agents if (j := a.jct_s) is not None]
    errors = Counter(s.error for s in result.samples if s.error)
    return {
        "tool": "dualpath replay",
        "command": list(command),
        "machine": machine(),
        "started_at": result.started_at,
        "wall_s": result.wall_s,
        "config": {
            "url": c.url,
            "mode": c.mode.value,
            "aps": c.aps,
            "agents": len(result.agents),
            "max_turns": c.max_turns,
            "model": result.model,
            "max_concurrency": c.max_concurrency,
            "seed": c.seed,
            "tool_latency_scale": c.tool_latency_scale,
            "ignore_eos": c.ignore_eos,
            "retry_shed": c.retry_shed,
            "slo": {"ttft_s": c.slo.ttft_s, "tpot_s": c.slo.tpot_s},
        },
        "trace": {"path": trace_path, "meta": dict(trace.meta), "agents": len(trace.agents)},
        "planned_requests": result.planned_requests,
        "summary": summary,
        "agents_finished": len(jcts),
        "agent_jct_s": _dist(jcts),
        "agents": [{**dataclasses.asdict(a), "jct_s": a.jct_s} for a in result.agents],
        "errors": dict(errors.most_common(TOP_ERRORS)),
        "series": time_series(result.samples).as_json(),
        "snic": [dataclasses.asdict(n) for n in result.snic],
        "server_read_paths": result.server_read_paths,
    }


def write_results(folder: Path, result: ReplayResult, body: dict[str, Any]) -> tuple[Path, Report]:
    """`results.json` (`body`, from `results_json`) and the report into `folder`; the JSON's
    path and the report."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / RESULTS
    path.write_bytes(orjson.dumps(body, option=orjson.OPT_INDENT_2))
    with (folder / SAMPLES).open("wb") as lines:
        for sample, itl in zip(result.samples, result.itl, strict=True):
            row = dataclasses.asdict(sample)
            row["itl"] = dataclasses.asdict(itl) if itl is not None else None
            lines.write(orjson.dumps(row) + b"\n")
    c = result.config
    paths = result.server_read_paths
    report = write_report(
        folder,
        result.samples,
        c.slo,
        title=f"dualpath replay: {c.mode.value}, {len(result.agents)} agents, {result.model}",
        summary=body["summary"],
        snic=result.snic,
        read_paths=paths or None,
        read_path_source=f"server's last {sum(paths.values())} decisions" if paths else "requests",
        extra=[
            ("endpoint", c.url),
            ("wall time (s)", f"{result.wall_s:.3f}"),
            ("agents finished", f"{body['agents_finished']} of {len(result.agents)}"),
            ("agent JCT p50 (s)", _fmt(body["agent_jct_s"]["p50"])),
            ("started", result.started_at),
        ],
    )
    return path, report


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.4g}"
