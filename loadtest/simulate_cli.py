"""`dualpath simulate`: the gateway's policies and the engines' model on a virtual clock.

    dualpath simulate --preset 64k --agents 1024 --cluster 2P4D --compare basic,dualpath-slo,oracle
    dualpath simulate --trace t.jsonl --mode online --capacity --slo ttft=4,tpot=0.05 --json o.json

Offline (default): every agent starts at once; the figure is JCT. Online: agents arrive as a
Poisson process at `--aps`; `--capacity` searches the most agents per second that meet the SLO.
Tool latency is left out (`--tool-latency 0`, the paper's setting) unless asked for.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.console import Console
from rich.table import Table

from engines.engine_model import MODELS
from gateway.scheduler.config import SchedulerConfig
from gateway.scheduler.policies import POLICIES
from loadtest.errors import LoadtestError
from loadtest.generator import generate
from loadtest.metrics import SLO
from loadtest.sim.experiments import (
    Window,
    agent_run_s,
    arrivals,
    capacity,
    compare_results,
    parse_cluster,
    run_all,
)
from loadtest.sim.simulator import ORACLE, SimAgent, SimConfig, SimResult, SimTurn
from loadtest.trace import Trace
from loadtest.trace_files import load_trace

_out = Console()
_err = Console(stderr=True)
KNOWN_POLICIES = (*POLICIES, ORACLE)


class Mode(StrEnum):
    OFFLINE = "offline"
    ONLINE = "online"


def _fail(message: str) -> typer.Exit:
    _err.print(message, style="red", markup=False, highlight=False, soft_wrap=True)
    return typer.Exit(2)


def _agents(trace: Trace, limit: int | None, tool_scale: float) -> list[SimAgent]:
    chosen = trace.agents[:limit] if limit else trace.agents
    return [
        SimAgent(tuple(SimTurn(t.append, t.output, t.tool_s * tool_scale) for t in a.turns))
        for a in chosen
    ]


def _table(runs: dict[str, dict[str, Any]], base: str) -> Table:
    table = Table(title=f"simulated (ratios: {base} JCT over each)")
    for column in ("policy", "JCT s", "×", "TTFT p50", "TTFT p99", "TPOT p50", "SNIC max/avg",
                   "goodput/s", "requests", "wall s", "sim req/s"):  # fmt: skip
        table.add_column(column, justify="left" if column == "policy" else "right")
    base_jct = runs[base]["jct_s"]
    for name, r in runs.items():
        ratio = base_jct / r["jct_s"] if r["jct_s"] else float("nan")

        def f(v: float | None, fmt: str = "{:.3f}") -> str:
            return "-" if v is None else fmt.format(v)

        table.add_row(
            name, f(r["jct_s"], "{:.1f}"), f(ratio, "{:.2f}"), f(r["ttft_p50_s"]),
            f(r["ttft_p99_s"]), f(r["tpot_p50_s"], "{:.4f}"), f(r["snic_max_over_avg"], "{:.2f}"),
            f(r["goodput_rps"], "{:.2f}"), str(r["requests"]), f(r["wall_s"], "{:.1f}"),
            f(r["simulated_requests_per_s"], "{:.0f}"),
        )  # fmt: skip
    return table


def _write_report(folder: Path, result: SimResult, slo: SLO, title: str) -> None:
    from loadtest.report.render import write_report  # matplotlib: only when a report is asked
    from loadtest.report.series import SnicSeries

    snic = [
        SnicSeries(
            node, tuple(t for t, _ in pts), tuple(b for _, b in pts), result.snic_bytes_per_s
        )
        for node, pts in result.snic_samples.items()
    ]
    extra = [("storage-NIC max/avg", f"{result.snic_max_over_avg:.3f}"),
             ("simulated requests/s", f"{len(result.samples) / result.wall_s:.0f}")]  # fmt: skip
    write_report(folder, result.samples, slo, title=title, snic=snic, extra=extra)


def simulate(
    trace: Annotated[
        Path | None, typer.Option(exists=True, dir_okay=False, help="A trace (ours or Mooncake).")
    ] = None,
    preset: Annotated[
        str | None, typer.Option(help="Or generate one: 32k, 48k or 64k (Table 2).")
    ] = None,
    agents: Annotated[
        int | None, typer.Option(min=1, help="Agents (first N of the trace).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Generated traces and online arrivals.")] = 0,
    model: Annotated[str, typer.Option(help=f"Cost model: {', '.join(MODELS)}.")] = (
        "ds-v3.2-660b"
    ),
    cluster: Annotated[str, typer.Option(help="xPyD: prefill and decode engines.")] = "2P4D",
    policy: Annotated[str, typer.Option(help=f"One of {', '.join(KNOWN_POLICIES)}.")] = (
        "dualpath-slo"
    ),
    compare_with: Annotated[
        str | None,
        typer.Option("--compare", help="Comma-separated policies on the same work (first = base)."),
    ] = None,
    mode: Annotated[Mode, typer.Option(help="offline (JCT) or online (Poisson arrivals).")] = (
        Mode.OFFLINE
    ),
    aps: Annotated[
        float | None, typer.Option(min=0.0001, help="Online: agents per second.")
    ] = None,
    find_capacity: Annotated[
        bool,
        typer.Option(
            "--capacity",
            help="Online: the most APS whose turns meet the SLO in steady state (the trace's "
            "agents replayed in turn by Poisson arrivals).",
        ),
    ] = False,
    warmup: Annotated[
        float | None,
        typer.Option(
            min=0,
            help="Capacity: seconds before turns are judged (default: one "
            "mean agent run with every turn at the SLO's edge).",
        ),
    ] = None,
    measure: Annotated[
        float, typer.Option(min=1, help="Capacity: seconds of turns judged.")
    ] = 300.0,
    aps_low: Annotated[float, typer.Option(min=0.0001, help="Capacity: search from.")] = 0.01,
    aps_high: Annotated[float, typer.Option(min=0.0001, help="Capacity: search to.")] = 10.0,
    slo: Annotated[str, typer.Option(help="ttft=SECONDS,tpot=SECONDS")] = "ttft=4,tpot=0.05",
    layerwise: Annotated[
        bool, typer.Option(help="Engines prefill layer-wise (load and compute overlap).")
    ] = False,
    tool_latency: Annotated[
        float, typer.Option(min=0, help="Scale of the trace's tool latency (0: none).")
    ] = 0.0,
    time_scale: Annotated[
        float, typer.Option(min=0.001, help="Every modelled time × this (as `up --time-scale`).")
    ] = 1.0,
    snic_gbps: Annotated[
        float | None, typer.Option(min=0.001, help="Every node's storage NIC, GB/s.")
    ] = None,
    cnic_gbps: Annotated[
        float | None, typer.Option(min=0.001, help="Every node's compute NIC, GB/s.")
    ] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the figures here.")] = None,
    out: Annotated[
        Path | None,
        typer.Option(help="Report folder: plots and index.html per policy (as replay's)."),
    ] = None,
) -> None:
    """Run the gateway's scheduling policies over a trace on a simulated PD cluster."""
    try:
        target = SLO.parse(slo)
        prefill, decode = parse_cluster(cluster)
    except ValueError as exc:
        raise _fail(str(exc)) from None
    policies = compare_with.split(",") if compare_with else [policy]
    unknown = [p for p in policies if p not in KNOWN_POLICIES]
    if unknown or model not in MODELS:
        raise _fail(f"unknown policy or model: {unknown or model}; policies: {KNOWN_POLICIES}")
    if (trace is None) == (preset is None):
        raise _fail("give either --trace FILE or --preset 32k|48k|64k")
    try:
        loaded = load_trace(trace).trace if trace else generate(str(preset), agents or 500, seed)
    except (LoadtestError, ValueError) as exc:
        raise _fail(str(exc)) from None
    work = _agents(loaded, agents, tool_latency)
    scheduler = SchedulerConfig(ttft_s=target.ttft_s, tpot_s=target.tpot_s)
    config = SimConfig(
        model=model,
        prefill=prefill,
        decode=decode,
        scheduler=scheduler,
        layerwise=layerwise,
        time_scale=time_scale,
        snic_gbps=snic_gbps,
        cnic_gbps=cnic_gbps,
    )
    report: dict[str, Any] = {
        "command": " ".join(["dualpath", *sys.argv[1:]]),
        "model": model,
        "cluster": cluster,
        "mode": mode.value,
        "agents": len(work),
        "requests": sum(len(a.turns) for a in work),
    }
    if mode is Mode.ONLINE and find_capacity:
        if not aps_low < aps_high:
            raise _fail("--aps-low must be below --aps-high")
        window = Window(agent_run_s(work, target) if warmup is None else warmup, measure)
        report["capacity"] = {
            p: capacity(work, replace(config, policy=p), target, seed, window, aps_low, aps_high)
            for p in policies
        }
        for p, found in report["capacity"].items():
            aps = found["aps"]
            _out.print(f"{p}: " + (f"capacity {aps:.4f} agents/s" if aps else found["note"]))
    else:
        if mode is Mode.ONLINE and aps is None:
            raise _fail("online mode needs --aps (or --capacity)")
        times = arrivals(len(work), aps if mode is Mode.ONLINE else None, seed)
        results = run_all(work, config, policies, times)
        report.update(compare_results(results, target))
        _out.print(_table(report["policies"], policies[0]))
        if out is not None:
            for name, result in results.items():
                _write_report(out / name, result, target, f"{name} on {cluster} ({model})")
    if json_out is not None:
        json_out.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
