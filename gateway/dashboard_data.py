"""`GET /dashboard/data`: what the live dashboard draws, read from the `/metrics` registry itself
(one collection, so the page and Prometheus never disagree) plus the recent TTFT/TPOT values.

Over time: a bounded ring of points, one at most every `interval_s`, taken when the page asks
(every viewer sees the same history; nothing runs while nobody looks).
"""

from __future__ import annotations

import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable
from typing import Any

from gateway.metrics import ACTIVE_WINDOW_S, GatewayMetrics

SERIES_POINTS = 600
"""Ten minutes at one point a second."""
LATENCY_WINDOW_S = 10.0
"""TTFT/TPOT percentiles are over the requests that finished within this long."""
GENERATE_ROUTES = ("/v1/chat/completions", "/v1/completions")

Samples = dict[str, list[tuple[dict[str, str], float]]]


def _samples(metrics: GatewayMetrics) -> Samples:
    """Every sample of the registry by its exposed name (`dualpath_requests_total`, …)."""
    out: Samples = defaultdict(list)
    for family in metrics.registry.collect():
        for s in family.samples:
            out[s.name].append((s.labels, s.value))
    return out


def _total(samples: Samples, name: str, by: str | None = None) -> Any:
    if by is None:
        return sum(v for _, v in samples.get(name, ()))
    sums: dict[str, float] = defaultdict(float)
    for labels, v in samples.get(name, ()):
        sums[labels.get(by, "")] += v
    return dict(sums)


def _percentiles(recent: Iterable[tuple[float, float]], since: float) -> dict[str, float | None]:
    values = sorted(v for t, v in recent if t >= since)
    if not values:
        return {"p50": None, "p90": None, "n": 0}

    def at(q: float) -> float:
        return values[min(int(q * len(values)), len(values) - 1)]

    return {"p50": at(0.5), "p90": at(0.9), "n": len(values)}


def _pivot(samples: Samples, key: str, columns: dict[str, str]) -> list[dict[str, Any]]:
    """Rows by the `key` label: each column the value of one metric for that row."""
    rows: dict[str, dict[str, Any]] = {}
    for column, name in columns.items():
        for labels, v in samples.get(name, ()):
            row = rows.setdefault(labels[key], {key: labels[key], "role": labels.get("role")})
            if "model" in labels:
                row["model"] = labels["model"]
            row[column] = v
    return list(rows.values())


ENGINE_COLUMNS = {
    "healthy": "dualpath_engine_healthy",
    "running": "dualpath_engine_running_requests",
    "queued": "dualpath_engine_queued_requests",
    "tokens": "dualpath_engine_tokens",
    "max_tokens": "dualpath_engine_max_tokens",
}
NODE_COLUMNS = {
    "snic_utilization": "dualpath_snic_utilization",
    "cnic_utilization": "dualpath_cnic_utilization",
    "snic_queue_s": "dualpath_snic_queue_seconds",
    "cnic_queue_s": "dualpath_cnic_queue_seconds",
}


class Dashboard:
    def __init__(
        self,
        metrics: GatewayMetrics,
        interval_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._metrics = metrics
        self._interval_s = interval_s
        self._clock = clock
        self._wall = wall
        self._series: deque[dict[str, Any]] = deque(maxlen=SERIES_POINTS)
        self._last: tuple[float, float] | None = None
        """(monotonic time, generate requests) at the last point, for requests per second."""

    def data(self) -> dict[str, Any]:
        now = self._clock()
        samples = _samples(self._metrics)
        requests = [
            (labels, v)
            for labels, v in samples.get("dualpath_requests_total", ())
            if labels["route"] in GENERATE_ROUTES
        ]
        done = sum(v for _, v in requests)
        since = now - LATENCY_WINDOW_S
        body: dict[str, Any] = {
            "time": self._wall(),
            "policy": self._metrics.live.policy if self._metrics.live else None,
            "requests": {
                "total": done,
                "errors": sum(v for labels, v in requests if int(labels["status"]) >= 400),
            },
            "queue_depth": _total(samples, "dualpath_queue_depth"),
            "sheds": _total(samples, "dualpath_sheds_total"),
            "read_paths": _total(samples, "dualpath_read_path_decisions_total", by="read_path"),
            "sessions": {
                "active": _total(samples, "dualpath_active_sessions"),
                "window_s": ACTIVE_WINDOW_S,
                "hits": _total(samples, "dualpath_session_hits_total"),
                "misses": _total(samples, "dualpath_session_misses_total"),
            },
            "tokens": {
                "prompt": _total(samples, "dualpath_prompt_tokens_total"),
                "kv_hit": _total(samples, "dualpath_kv_hit_tokens_total"),
                "completion": _total(samples, "dualpath_completion_tokens_total"),
            },
            "latency": {
                "window_s": LATENCY_WINDOW_S,
                "ttft": _percentiles(self._metrics.recent_ttft, since),
                "tpot": _percentiles(self._metrics.recent_tpot, since),
            },
            "engines": _pivot(samples, "engine", ENGINE_COLUMNS),
            "nodes": _pivot(samples, "node", NODE_COLUMNS),
        }
        self._sample(now, done, body)
        body["series"] = list(self._series)
        return body

    def _sample(self, now: float, done: float, body: dict[str, Any]) -> None:
        """Add a point to the ring unless the last one is under an interval old."""
        if self._last is not None and now - self._last[0] < self._interval_s * 0.9:
            return
        rate = None
        if self._last is not None:
            rate = (done - self._last[1]) / (now - self._last[0])
        self._last = (now, done)
        latency = body["latency"]
        self._series.append(
            {
                "t": body["time"],
                "rps": rate,
                "queue_depth": body["queue_depth"],
                "active_sessions": body["sessions"]["active"],
                "ttft_p50": latency["ttft"]["p50"],
                "ttft_p90": latency["ttft"]["p90"],
                "tpot_p50": latency["tpot"]["p50"],
                "tpot_p90": latency["tpot"]["p90"],
            }
        )
