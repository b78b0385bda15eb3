"""`dualpath report --spans FILE`: the load-test report, rebuilt from exported spans.

Reads OTLP/JSON spans (`loadtest.span_report`), prints TTFT/TPOT, the read-path share and the
per-stage times, and with `--out DIR` writes the same report folder as `dualpath replay`
(`index.html` and its plots, via `loadtest.report.write_report`) plus `span_report.json`.
Exit codes: 0 a report was made; 2 the file could not be read or held no request span.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.console import Console
from rich.table import Table

from loadtest.errors import LoadtestError
from loadtest.metrics import SLO, summarize
from loadtest.span_report import StageStats, read_spans, samples_of, stage_stats

REPORT_JSON = "span_report.json"
_out = Console()
_err = Console(stderr=True)


def _fail(message: str) -> typer.Exit:
    _err.print(message, style="red", markup=False, highlight=False, soft_wrap=True)
    return typer.Exit(2)


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value * 1000:.3f}"


def _stage_rows(stages: list[StageStats]) -> list[tuple[str, str]]:
    return [
        (
            f"stage {st.service}/{st.name}: p50 / p99 ms (n)",
            f"{_ms(st.p50_s)} / {_ms(st.p99_s)} ({st.count:,})",
        )
        for st in stages
    ]


def _table(summary: dict[str, Any], stages: list[StageStats]) -> Table:
    table = Table(title="from spans")
    for column in ("figure", "p50 ms", "p90 ms", "p99 ms", "n"):
        table.add_column(column, justify="left" if column == "figure" else "right")
    for label, key in (("TTFT", "ttft_s"), ("TPOT", "tpot_s"), ("E2E", "e2e_s")):
        dist = summary[key]
        table.add_row(label, _ms(dist["p50"]), _ms(dist["p90"]), _ms(dist["p99"]), "")
    for st in stages:
        name = f"{st.service}/{st.name}"
        table.add_row(name, _ms(st.p50_s), _ms(st.p90_s), _ms(st.p99_s), f"{st.count:,}")
    return table


def report(
    spans: Annotated[
        Path,
        typer.Option(exists=True, dir_okay=False, help="OTLP/JSON spans (an object or lines)."),
    ],
    out: Annotated[
        Path | None, typer.Option(file_okay=False, help="Write the HTML report folder here.")
    ] = None,
    slo: Annotated[str, typer.Option(help="Targets in seconds for goodput.")] = (
        "ttft=4,tpot=0.05"
    ),
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Rebuild the load-test report (TTFT/TPOT, read-path share, per-stage time) from spans."""
    try:
        targets = SLO.parse(slo)
        all_spans = read_spans(spans)
    except (LoadtestError, ValueError) as exc:
        raise _fail(str(exc)) from None
    samples = samples_of(all_spans)
    if not samples:
        raise _fail(f"{spans}: no gateway request span (chat.completions, completions) in it")
    stages = stage_stats(all_spans)
    summary = summarize(samples, targets)
    body = {
        "tool": "dualpath report --spans",
        "source": str(spans),
        "spans": len(all_spans),
        "summary": summary,
        "stages": [dataclasses.asdict(st) for st in stages],
    }
    if out is not None:
        from loadtest.report.render import write_report  # matplotlib: only when drawing

        out.mkdir(parents=True, exist_ok=True)
        (out / REPORT_JSON).write_bytes(orjson.dumps(body, option=orjson.OPT_INDENT_2))
        write_report(
            out,
            samples,
            targets,
            title=f"dualpath report from spans: {len(samples)} requests",
            summary=summary,
            read_path_source="request spans",
            extra=[
                ("spans file", str(spans)),
                ("spans", f"{len(all_spans):,}"),
                *_stage_rows(stages),
            ],
            notes=[
                "Times are the gateway's: from receiving each request (its span's start); TTFT "
                "is known for streamed requests only."
            ],
        )
    if as_json:
        typer.echo(orjson.dumps(body, option=orjson.OPT_INDENT_2).decode())
        return
    _out.print(_table(summary, stages))
    shares = summary["read_path_share"]
    if shares:
        _out.print("read paths: " + ", ".join(f"{k} {100 * v:.0f}%" for k, v in shares.items()))
    if out is not None:
        _err.print(f"wrote {out / 'index.html'}")
