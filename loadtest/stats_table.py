"""`TraceStats` (and a Mooncake conversion's report) as rich tables, next to Table 2 if known.

Kept apart from `trace_stats` so the simulator and replay can compute statistics without rich.
"""

from __future__ import annotations

from rich.table import Table

from loadtest.mooncake import MooncakeReport
from loadtest.presets import PaperRow
from loadtest.trace_stats import TraceStats


def _n(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 or value == int(value) else f"{value:,.1f}"


def _row(table: Table, name: str, cells: list[str], paper: float | None) -> None:
    """A row, with the paper's value when the table has that column."""
    if len(table.columns) > 5:
        cells = [*cells, _n(paper) if paper is not None else ""]
    table.add_row(name, *cells)


def stats_table(stats: TraceStats, paper: PaperRow | None = None, title: str = "") -> Table:
    """Distributions per agent and per request; the paper's column when the preset is known."""
    table = Table(title=title or None, title_justify="left")
    table.add_column("per", style="bold")
    for column in ("mean", "p50", "p99", "max"):
        table.add_column(column, justify="right")
    if paper:
        table.add_column("Table 2", justify="right", style="dim")
    spreads = (
        ("turns per agent", stats.turns_per_agent, paper.turns if paper else None),
        ("append per request", stats.append, None),
        ("output per request", stats.output, None),
        ("context per request", stats.context, paper.context if paper else None),
    )
    for name, summary, value in spreads:
        cells = [_n(summary.mean), _n(summary.p50), _n(summary.p99), _n(summary.max)]
        _row(table, name, cells, value)
    means = (
        ("append per turn, agent avg", stats.append_agent_mean, paper.append if paper else None),
        ("output per turn, agent avg", stats.output_agent_mean, paper.output if paper else None),
        ("total per agent", stats.total_mean, paper.total if paper else None),
    )
    for name, mean, value in means:
        _row(table, name, [_n(mean), "", "", ""], value)
    return table


def totals_table(stats: TraceStats, report: MooncakeReport | None = None) -> Table:
    """The trace's sums and the hit ratio; with a Mooncake report, what the inference found."""
    table = Table(show_header=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    rows = [
        ("agents", f"{stats.agents:,}"),
        ("requests", f"{stats.turns:,}"),
        ("prompt tokens (prefill if nothing cached)", f"{stats.prompt_tokens:,}"),
        ("appended tokens", f"{stats.appended_tokens:,}"),
        ("output tokens", f"{stats.output_tokens:,}"),
        ("hit ratio implied (1 − appended / prompt)", f"{stats.hit_ratio:.2%}"),
        ("tool latency mean", f"{stats.tool_s_mean:.3f} s"),
    ]
    if stats.span_s is not None:
        rows.append(("time span", f"{stats.span_s:,.1f} s"))
    if report is not None:
        rows += [
            ("mooncake: agents inferred from prefixes", f"{report.inferred_agents:,}"),
            ("mooncake: requests continuing an agent", f"{report.continued:,}"),
            ("mooncake: of them shorter than the context", f"{report.shortened:,}"),
            ("mooncake: 0-token appends/outputs raised to 1", f"{report.raised_to_one:,}"),
            ("mooncake: hit ratio of the original prompts", f"{report.hit_ratio:.2%}"),
        ]
    for name, value in rows:
        table.add_row(name, value)
    return table
