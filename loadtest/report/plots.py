"""The report's PNG plots, drawn with matplotlib's object API on the Agg canvas.

No pyplot and no global backend: each plot is a `Figure` saved and dropped, so nothing here
needs a display or changes matplotlib's state for anyone else. A plot with no data still gets
its file, saying so, so a report always has the same core files.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.figure import Figure

from loadtest.report.series import SnicSeries, TimeSeries, cdf, snic_rate

SIZE = (7.0, 4.0)
DPI = 110


def _save(fig: Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    return path


def _no_data(ax: Axes, what: str) -> None:
    ax.text(0.5, 0.5, f"no {what}", ha="center", va="center", transform=ax.transAxes)


def plot_cdf(
    path: Path, values: Sequence[float], *, title: str, unit: str, scale: float, slo: float | None
) -> Path:
    """A CDF of `values` (× `scale` in `unit`), with the SLO target as a dashed line."""
    fig = Figure(figsize=SIZE)
    ax = fig.subplots()
    ax.set_title(title)
    ax.set_xlabel(unit)
    ax.set_ylabel("fraction of requests")
    if values:
        xs, ys = cdf([v * scale for v in values])
        ax.step(xs, ys, where="post", color="tab:blue")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.set_xlim(0, xs[-1] * 1.05 or 1.0)
        if slo is not None:
            target = slo * scale
            if target <= 2 * xs[-1]:  # beyond that it would squash the curve: named, not drawn
                ax.set_xlim(0, max(xs[-1], target) * 1.05)
                ax.axvline(target, color="tab:red", ls="--", lw=1, label=f"SLO {target:g}")
            else:
                ax.plot([], [], " ", label=f"SLO {target:g} (off scale)")
            ax.legend(loc="lower right")
    else:
        _no_data(ax, "completed requests")
    return _save(fig, path)


def plot_throughput(path: Path, series: TimeSeries) -> Path:
    fig = Figure(figsize=SIZE)
    ax = fig.subplots()
    ax.set_title(f"completed requests per second ({series.bin_s:g} s bins)")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("requests / s")
    if series.t_s:
        ax.bar(series.t_s, series.completed_rps, width=series.bin_s, align="edge", label="done")
        if any(series.errors):
            errors = [e / series.bin_s for e in series.errors]
            ax.bar(series.t_s, errors, width=series.bin_s, align="edge", color="tab:red",
                   bottom=series.completed_rps, label="errors")  # fmt: skip
            ax.legend(loc="upper right")
        ax.grid(alpha=0.3)
    else:
        _no_data(ax, "requests")
    return _save(fig, path)


def plot_in_flight(path: Path, series: TimeSeries) -> Path:
    fig = Figure(figsize=SIZE)
    ax = fig.subplots()
    ax.set_title("requests in flight (sent, not finished)")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("requests")
    if series.t_s:
        edges = [*series.t_s, series.t_s[-1] + series.bin_s]
        ax.stairs(series.in_flight_max, edges, color="tab:orange", label="max in bin")
        ax.stairs(series.in_flight_mean, edges, color="tab:blue", label="mean in bin")
        ax.legend(loc="upper right")
        ax.grid(alpha=0.3)
    else:
        _no_data(ax, "requests")
    return _save(fig, path)


def plot_read_paths(path: Path, counts: Mapping[str, int], source: str) -> Path:
    fig = Figure(figsize=(5.0, 3.6))
    ax = fig.subplots()
    ax.set_title(f"read-path share ({source})")
    ax.set_ylabel("share of requests (%)")
    total = sum(counts.values())
    names = sorted(counts)
    shares = [100.0 * counts[n] / total for n in names] if total else []
    bars = ax.bar(names, shares, color="tab:green")
    ax.bar_label(bars, labels=[f"{s:.0f}%" for s in shares])
    ax.set_ylim(0, 110)
    return _save(fig, path)


def plot_snic(path: Path, nodes: Sequence[SnicSeries]) -> Path:
    fig = Figure(figsize=SIZE)
    ax = fig.subplots()
    ax.set_title("storage-NIC reads per node")
    ax.set_xlabel("time (s)")
    unit = "GB/s"
    for node in nodes:
        mids, rates, unit = snic_rate(node)
        ax.plot(mids, rates, label=node.node, lw=1.2)
    ax.set_ylabel(unit)
    ax.legend(loc="upper right", fontsize="small", ncols=2)
    ax.grid(alpha=0.3)
    return _save(fig, path)
