"""The time series and distributions a report draws, computed from `RequestSample`s. Pure.

Times are seconds from the run's first send. A request without an end (an error, or unfinished
in a simulation) counts as in flight from its send to its last known token, or for no time.
Bins have a "nice" width (1, 2 or 5 × 10^k seconds) picked for about `target_bins` bins.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from loadtest.metrics import RequestSample, percentile

MIN_BIN_S = 0.01


@dataclass(frozen=True, slots=True)
class SnicSeries:
    """One node's storage-NIC counter sampled over a run: cumulative bytes read at times."""

    node: str
    t_s: tuple[float, ...]
    """Seconds on the run's clock (the same origin as the samples' `sent_at`)."""
    moved_bytes: tuple[float, ...]
    """Cumulative bytes the NIC had moved at each time (modelled bytes for our workers)."""
    capacity_bytes_per_s: float | None = None
    """The NIC's bandwidth in bytes per modelled second; None: unknown (plot GB/s)."""
    time_scale: float = 1.0
    """Wall seconds per modelled second (a simulated worker's `--time-scale`; 1: real time)."""

    def __post_init__(self) -> None:
        if len(self.t_s) != len(self.moved_bytes):
            raise ValueError("one byte count per time")


@dataclass(frozen=True, slots=True)
class TimeSeries:
    bin_s: float
    t_s: tuple[float, ...]
    """Each bin's start."""
    completed_rps: tuple[float, ...]
    """Requests that finished in the bin, per second."""
    errors: tuple[int, ...]
    in_flight_mean: tuple[float, ...]
    """Requests sent and not yet finished, averaged over the bin."""
    in_flight_max: tuple[int, ...]
    ttft_p50_s: tuple[float | None, ...]
    """Median TTFT of the requests that finished in the bin."""

    def as_json(self) -> dict[str, object]:
        return {
            "bin_s": self.bin_s,
            "t_s": list(self.t_s),
            "completed_rps": list(self.completed_rps),
            "errors": list(self.errors),
            "in_flight_mean": list(self.in_flight_mean),
            "in_flight_max": list(self.in_flight_max),
            "ttft_p50_s": list(self.ttft_p50_s),
        }


def nice_bin(span_s: float, target_bins: int) -> float:
    """The smallest 1/2/5 × 10^k width giving at most `target_bins` bins over `span_s`."""
    raw = max(span_s / max(target_bins, 1), MIN_BIN_S)
    base = 10.0 ** math.floor(math.log10(raw))
    for step in (1.0, 2.0, 5.0, 10.0):
        if base * step >= raw * (1 - 1e-9):
            return base * step
    return base * 10.0  # pragma: no cover - the loop always returns


def _ended(s: RequestSample) -> float:
    for t in (s.end_at, s.second_token_at, s.first_token_at):
        if t is not None:
            return t
    return s.sent_at


def origin(samples: Sequence[RequestSample]) -> float:
    return min((s.sent_at for s in samples), default=0.0)


def time_series(samples: Sequence[RequestSample], target_bins: int = 120) -> TimeSeries:
    if not samples:
        return TimeSeries(1.0, (), (), (), (), (), ())
    t0 = origin(samples)
    span = max(_ended(s) for s in samples) - t0
    width = nice_bin(span, target_bins)
    n = max(1, math.floor(span / width) + 1)
    done = [0] * n
    errors = [0] * n
    ttfts: list[list[float]] = [[] for _ in range(n)]
    for s in samples:
        if s.ok and s.end_at is not None:
            i = min(int((s.end_at - t0) / width), n - 1)
            done[i] += 1
            if s.ttft_s is not None:
                ttfts[i].append(s.ttft_s)
        elif s.error is not None:
            errors[min(int((_ended(s) - t0) / width), n - 1)] += 1
    return TimeSeries(
        width,
        tuple(round(i * width, 9) for i in range(n)),
        tuple(d / width for d in done),
        tuple(errors),
        _in_flight_mean(samples, t0, width, n),
        _in_flight_max(samples, t0, width, n),
        tuple(percentile(v, 0.5) for v in ttfts),
    )


def _in_flight_mean(
    samples: Sequence[RequestSample], t0: float, width: float, n: int
) -> tuple[float, ...]:
    """Time in flight per bin over the bin's width, with a difference array for whole bins."""
    part = [0.0] * n
    whole = [0.0] * (n + 1)
    for s in samples:
        a, b = s.sent_at - t0, _ended(s) - t0
        i, j = min(int(a / width), n - 1), min(int(b / width), n - 1)
        if i == j:
            part[i] += b - a
            continue
        part[i] += (i + 1) * width - a
        part[j] += b - j * width
        whole[i + 1] += width
        whole[j] -= width
    out, running = [], 0.0
    for k in range(n):
        running += whole[k]
        out.append((part[k] + running) / width)
    return tuple(out)


def _in_flight_max(
    samples: Sequence[RequestSample], t0: float, width: float, n: int
) -> tuple[int, ...]:
    """The most requests in flight at any moment of each bin (an end before a send at a tie)."""
    events = sorted(
        [(s.sent_at - t0, 1) for s in samples] + [(_ended(s) - t0, -1) for s in samples]
    )
    peak, level, k = [0] * n, 0, 0
    for i in range(n):
        best = level  # what is carried into the bin
        end = (i + 1) * width
        while k < len(events) and (events[k][0] < end or i == n - 1):
            level += events[k][1]
            best = max(best, level)
            k += 1
        peak[i] = best
    return tuple(peak)


def cdf(values: Sequence[float]) -> tuple[list[float], list[float]]:
    """Sorted values and their cumulative fractions (1/n … 1)."""
    xs = sorted(values)
    n = len(xs)
    return xs, [(i + 1) / n for i in range(n)]


def read_path_counts(samples: Sequence[RequestSample]) -> Counter[str]:
    return Counter(s.read_path for s in samples if s.ok and s.read_path)


def snic_rate(series: SnicSeries) -> tuple[list[float], list[float], str]:
    """Per interval: its midpoint and the NIC's utilisation (%), or GB/s when the capacity or
    the time scale is unknown; and the unit's label."""
    t, b = series.t_s, series.moved_bytes
    mids, rates = [], []
    usable = series.capacity_bytes_per_s and series.time_scale > 0
    for k in range(1, len(t)):
        dt = t[k] - t[k - 1]
        if dt <= 0:
            continue
        per_s = (b[k] - b[k - 1]) / dt
        mids.append((t[k] + t[k - 1]) / 2)
        if usable:
            assert series.capacity_bytes_per_s is not None
            rates.append(100.0 * per_s * series.time_scale / series.capacity_bytes_per_s)
        else:
            rates.append(per_s / 1e9)
    return mids, rates, "utilisation (%)" if usable else "GB/s"
