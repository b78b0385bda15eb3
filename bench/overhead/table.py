"""The readable side of the report: rich tables for the terminal."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

Record = dict[str, object]


def _f(value: object, digits: int = 3) -> str:
    if not isinstance(value, int | float):
        return "–"
    if abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.{digits}f}"


def _signed(value: object) -> str:
    return "–" if not isinstance(value, int | float) else f"{value:+.3f}"


def results_table(results: list[Record], comparisons: list[Record]) -> Table:
    added = {
        (c["client"], c["concurrency"], c["system"]): c
        for c in comparisons
        if c["baseline"] == "direct"
    }
    t = Table(title="Streaming chat through each system (medians over repeats)")
    for col in (
        "client",
        "C",
        "system",
        "req/s (min..max)",
        "TTFT p50 / p99 ms",
        "E2E p50 / p99 ms",
        "added E2E p50 / p99",
        "SUT cores",
        "SUT CPU ms/req",
        "workers ms/req",
        "RSS MB",
        "errors",
    ):
        t.add_column(col, justify="left" if col in ("client", "system") else "right")
    for r in results:
        a = added.get((r["client"], r["concurrency"], r["system"]), {})
        t.add_row(
            str(r["client"]),
            str(r["concurrency"]),
            str(r["system"]),
            f"{_f(r['rps'])} ({_f(r['rps_min'])}..{_f(r['rps_max'])})",
            f"{_f(r['ttft_p50_ms'])} / {_f(r['ttft_p99_ms'])}",
            f"{_f(r['e2e_p50_ms'])} / {_f(r['e2e_p99_ms'])}",
            f"{_signed(a.get('added_e2e_p50_ms'))} / {_signed(a.get('added_e2e_p99_ms'))}",
            _f(r["sut_cpu_cores"], 2),
            _f(r["sut_cpu_ms_per_req"]),
            _f(r["workers_cpu_ms_per_req"]),
            _f(r["sut_peak_rss_mb"], 0),
            str(r["errors"]),
        )
    return t


def ratio_table(comparisons: list[Record]) -> Table:
    t = Table(title="Gateway against sglang-router, same run")
    for col in ("client", "C", "req/s ratio", "CPU/req ratio", "Δ TTFT p50 ms", "Δ E2E p50 ms"):
        t.add_column(col, justify="left" if col == "client" else "right")
    for c in comparisons:
        if c["baseline"] == "router" and c["system"] == "gateway":
            t.add_row(
                str(c["client"]),
                str(c["concurrency"]),
                _f(c["rps_ratio"]),
                _f(c["sut_cpu_ms_per_req_ratio"]),
                _signed(c["added_ttft_p50_ms"]),
                _signed(c["added_e2e_p50_ms"]),
            )
    return t


def targets_table(targets: list[Record]) -> Table:
    t = Table(title="Targets (gateway; router shown for reference)")
    for col in ("target", "client", "C", "goal", "gateway", "router", "result"):
        t.add_column(col, justify="left" if col in ("target", "client", "result") else "right")
    for g in targets:
        passed = g["passed"]
        result = (
            ("[green]met[/]" if passed else "[red]not met[/]")
            if passed is not None
            else f"[yellow]n/a[/] {str(g['note'] or '')[:60]}"
        )
        t.add_row(
            str(g["name"]),
            str(g["client"]),
            str(g["concurrency"]),
            f"{g['comparison']} {g['threshold']} {g['unit']}",
            _f(g["gateway_value"]),
            _f(g["router_value"]),
            result,
        )
    return t


def print_report(report: Record, console: Console | None = None) -> None:
    if console is None:
        console = Console()
        if not console.is_terminal:  # a pipe or a log file: do not squeeze columns into 80
            console = Console(width=200)
    results: list[Record] = report["results"]  # type: ignore[assignment]
    comparisons: list[Record] = report["comparisons"]  # type: ignore[assignment]
    console.print(results_table(results, comparisons))
    if any(c["baseline"] == "router" and c["system"] == "gateway" for c in comparisons):
        console.print(ratio_table(comparisons))
    console.print(targets_table(report["targets"]))  # type: ignore[arg-type]
    for name, s in report["systems"].items():  # type: ignore[attr-defined]
        if s.get("skipped"):
            console.print(f"[yellow]{name} skipped:[/] {s['skipped'][:300]}")
