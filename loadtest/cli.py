"""`dualpath trace gen` and `dualpath trace stats`: make a Table 2 workload, or look at one.

A typer sub-app that `gateway/cli.py` mounts as `trace`. Messages go to stderr and tables or JSON
to stdout, so `dualpath trace stats FILE --json | jq` works. A trace that cannot be read exits
with code 2 and the file, line and reason; a bad option value exits 2 through typer.
"""

from __future__ import annotations

import dataclasses
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.console import Console

from loadtest.errors import LoadtestError
from loadtest.generator import DEFAULT_TOOL_LATENCY_S, ToolLatency, generate
from loadtest.presets import PRESETS, PaperRow
from loadtest.replay.command import replay
from loadtest.stats_table import stats_table, totals_table
from loadtest.trace import Trace
from loadtest.trace_files import LoadedTrace, TraceFormat, load_trace
from loadtest.trace_io import write_trace
from loadtest.trace_stats import TraceStats, trace_stats

trace_app = typer.Typer(
    name="trace",
    help="Traces: generate the paper's Table 2 workloads; read ours or Mooncake's; summarise.",
    no_args_is_help=True,
    add_completion=False,
)
_out = Console()
_err = Console(stderr=True)


class PresetName(StrEnum):
    """The presets of `loadtest.presets` (a test keeps the two in step)."""

    K32 = "32k"
    K48 = "48k"
    K64 = "64k"


@trace_app.command("gen")
def gen(
    preset: Annotated[PresetName, typer.Option(help="Table 2 row: max length 32K, 48K or 64K.")],
    output: Annotated[
        Path, typer.Option("--output", "-o", dir_okay=False, help="Trace file to write (JSONL).")
    ],
    agents: Annotated[int, typer.Option(min=1, help="Agent trajectories.")] = 500,
    seed: Annotated[int, typer.Option(help="The same seed writes the same bytes.")] = 0,
    tool_latency: Annotated[
        float,
        typer.Option(
            min=0, metavar="MEAN_S", help="Mean tool latency per turn (0: none, as in the paper)."
        ),
    ] = DEFAULT_TOOL_LATENCY_S,
) -> None:
    """Write a synthetic coding-agent trace shaped like the paper's Table 2."""
    trace = generate(preset.value, agents, seed, ToolLatency(mean_s=tool_latency))
    try:
        write_trace(output, trace)
    except OSError as exc:
        message = f"cannot write {output}: {exc.strerror or exc}"
        _err.print(message, style="red", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    _err.print(
        f"wrote {len(trace.agents):,} agents, {trace.turns:,} turns "
        f"({preset.value} preset, seed {seed}) to {output}"
    )


@trace_app.command("stats")
def stats(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="A trace file.")],
    fmt: Annotated[
        TraceFormat, typer.Option("--format", help="ours, mooncake, or auto (by the first line).")
    ] = TraceFormat.AUTO,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
) -> None:
    """Summarise a trace: turns, appends, outputs, context, tokens and the implied hit ratio."""
    try:
        loaded = load_trace(file, fmt)
    except LoadtestError as exc:
        _err.print(str(exc), style="red", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    summary = trace_stats(loaded.trace)
    paper = _paper_row(loaded.trace)
    if as_json:
        typer.echo(orjson.dumps(_json(loaded, summary, paper), option=orjson.OPT_INDENT_2).decode())
        return
    title = f"{file.name} ({loaded.format.value} format)"
    _out.print(stats_table(summary, paper, title))
    _out.print(totals_table(summary, loaded.mooncake))


def _paper_row(trace: Trace) -> PaperRow | None:
    """Table 2's row when the trace says it was generated from a preset."""
    preset = PRESETS.get(str(trace.meta.get("preset")))
    return preset.paper if preset and "generator" in trace.meta else None


def _json(loaded: LoadedTrace, summary: TraceStats, paper: PaperRow | None) -> dict[str, Any]:
    result: dict[str, Any] = {
        "format": loaded.format.value,
        "meta": dict(loaded.trace.meta),
        "stats": dataclasses.asdict(summary),
    }
    if paper is not None:
        result["paper"] = dataclasses.asdict(paper)
    if loaded.mooncake is not None:
        report = loaded.mooncake
        result["mooncake"] = dataclasses.asdict(report) | {"hit_ratio": report.hit_ratio}
    return result


def register(app: typer.Typer) -> None:
    """Mount loadtest's top-level commands on the program's app: `replay` (the `trace` tools
    are the sub-app `trace_app`)."""
    app.command("replay")(replay)
