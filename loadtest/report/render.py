"""`write_report`: a folder of PNG plots and an `index.html` from a run's `RequestSample`s.

Shared by `dualpath replay` and `dualpath simulate`: both hand over their samples (the figures
are `loadtest.metrics.summarize`'s), optionally each node's storage-NIC byte counter over time
and read-path counts from elsewhere than the samples; rows of their own go in `extra`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loadtest.metrics import SLO, RequestSample, summarize
from loadtest.report.html import Plot, render_html
from loadtest.report.plots import (
    plot_cdf,
    plot_in_flight,
    plot_read_paths,
    plot_snic,
    plot_throughput,
)
from loadtest.report.series import SnicSeries, TimeSeries, read_path_counts, time_series

INDEX = "index.html"
CORE_PLOTS = ("ttft_cdf.png", "tpot_cdf.png", "throughput.png", "in_flight.png")
READ_PATHS_PLOT = "read_paths.png"
SNIC_PLOT = "snic.png"
TOP_ERRORS = 10


@dataclass(frozen=True, slots=True)
class Report:
    folder: Path
    index: Path
    plots: tuple[Path, ...]
    series: TimeSeries


def write_report(
    folder: Path,
    samples: Sequence[RequestSample],
    slo: SLO,
    *,
    title: str = "dualpath run",
    summary: Mapping[str, Any] | None = None,
    snic: Sequence[SnicSeries] = (),
    read_paths: Mapping[str, int] | None = None,
    read_path_source: str = "requests",
    extra: Sequence[tuple[str, str]] = (),
    notes: Sequence[str] = (),
) -> Report:
    """Write the plots and `index.html` into `folder` (created if missing).

    `summary`: `summarize(samples, slo)` when None. `read_paths`: counts to draw instead of the
    samples' own `read_path`s (e.g. the server's), labelled with `read_path_source`.
    """
    folder.mkdir(parents=True, exist_ok=True)
    summary = summary if summary is not None else summarize(samples, slo)
    done = [s for s in samples if s.ok]
    series = time_series(samples)
    ttft = [v for s in done if (v := s.ttft_s) is not None]
    tpot = [v for s in done if (v := s.tpot_s) is not None]
    plots = [
        Plot(plot_cdf(folder / CORE_PLOTS[0], ttft, title="TTFT CDF", unit="TTFT (s)",
                      scale=1.0, slo=slo.ttft_s).name, "time to first token"),
        Plot(plot_cdf(folder / CORE_PLOTS[1], tpot, title="TPOT CDF", unit="TPOT (ms)",
                      scale=1000.0, slo=slo.tpot_s).name, "time per output token"),
        Plot(plot_throughput(folder / CORE_PLOTS[2], series).name, "throughput over time"),
        Plot(plot_in_flight(folder / CORE_PLOTS[3], series).name, "requests in flight"),
    ]  # fmt: skip
    notes = list(notes)
    counts = dict(read_paths) if read_paths is not None else dict(read_path_counts(samples))
    if sum(counts.values()):
        plot_read_paths(folder / READ_PATHS_PLOT, counts, read_path_source)
        plots.append(Plot(READ_PATHS_PLOT, f"read-path share ({read_path_source})"))
    else:
        notes.append("No read-path share: the server did not say which path each request took.")
    drawn = [n for n in snic if len(n.t_s) >= 2]
    if drawn:
        plot_snic(folder / SNIC_PLOT, drawn)
        plots.append(Plot(SNIC_PLOT, "storage-NIC reads per node"))
    index = folder / INDEX
    errors = Counter(s.error for s in samples if s.error).most_common(TOP_ERRORS)
    index.write_text(render_html(title, summary, plots, extra, notes, errors), encoding="utf-8")
    return Report(folder, index, tuple(folder / p.file for p in plots), series)
