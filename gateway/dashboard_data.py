"""`GET /dashboard/data`: what the live dashboard draws, read from the `/metrics` registry itself
(one collection, so the page and Prometheus never disagree) plus the recent TTFT/TPOT values.

Over time: a bounded ring of points, one at most every `interval_s`, taken when the page asks
(every viewer sees the same history; nothing runs while nobody looks), and beside it each node's
storage/compute NIC utilisation at the same points (`NodeHistory`).
"""

from __future__ import annotations

import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from gateway.live_state import RATE_WINDOW_S
from gateway.metrics import ACTIVE_WINDOW_S, GatewayMetrics

SERIES_POINTS = 600
"""Ten minutes at one point a second."""
LATENCY_WINDOW_S = 10.0
"""TTFT/TPOT percentiles are over the requests that finished within this long."""
NODE_SERIES_LIMIT = 32
"""Nodes whose NIC history is kept (the table lists every node): bounds the map and the page's
payload (two numbers a point a node) at the paper's 144-node scale."""
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


def snic_max_over_avg(nodes: Iterable[dict[str, Any]]) -> float | None:
    """The paper's balance figure: the busiest storage NIC's utilisation over the mean of all of
    them (each over the last `RATE_WINDOW_S`); None while none reads anything."""
    used = [n["snic_utilization"] for n in nodes if n.get("snic_utilization") is not None]
    mean = sum(used) / len(used) if used else 0.0
    return max(used) / mean if mean > 0 else None


@dataclass(slots=True)
class _NodeRing:
    role: str | None
    points: deque[tuple[float | None, float | None]]
    """(storage, compute) NIC utilisation at each point since the node was first seen."""
    seen: int
    """The last tick the node was present at."""


class NodeHistory:
    """Per node, its storage/compute NIC utilisation at each point of the dashboard's series.

    Rings as long as the series and filled at the same ticks (None while the node is absent), so
    a node that left falls out after as many points as any other value does. At most `limit`
    nodes: a new one takes the place of the longest-absent when full, and goes untracked while
    every tracked node is still present.
    """

    def __init__(self, points: int = SERIES_POINTS, limit: int = NODE_SERIES_LIMIT) -> None:
        self._points = points
        self._limit = limit
        self._rings: dict[str, _NodeRing] = {}
        self._tick = 0

    def add(self, nodes: Iterable[dict[str, Any]]) -> None:
        """One point: `nodes` are the rows of `Dashboard.data()["nodes"]` at this moment."""
        self._tick += 1
        present = {n["node"]: n for n in nodes}
        # Mark every tracked node that is here before admitting new ones, so none of them is
        # taken for absent and evicted.
        for name, row in present.items():
            if (ring := self._rings.get(name)) is not None:
                ring.role, ring.seen = row.get("role"), self._tick
        for name, row in present.items():
            if name not in self._rings and self._make_room():
                ring = _NodeRing(row.get("role"), deque(maxlen=self._points), self._tick)
                self._rings[name] = ring
        for name, ring in list(self._rings.items()):
            if self._tick - ring.seen >= self._points:
                del self._rings[name]  # Only None left in its ring.
                continue
            row = present.get(name, {})
            ring.points.append((row.get("snic_utilization"), row.get("cnic_utilization")))

    def _make_room(self) -> bool:
        if len(self._rings) < self._limit:
            return True
        gone = min(self._rings, key=lambda name: self._rings[name].seen)
        if self._rings[gone].seen == self._tick:
            return False
        del self._rings[gone]
        return True

    def series(self, length: int) -> list[dict[str, Any]]:
        """Each node's last `length` values, padded at the front with None to `length`, so that
        index i is the same moment as point i of a series of that many points."""
        out = []
        for name, ring in self._rings.items():
            kept = list(ring.points)[max(len(ring.points) - length, 0) :]
            pad = [None] * (length - len(kept))
            out.append(
                {
                    "node": name,
                    "role": ring.role,
                    "snic": pad + [s for s, _ in kept],
                    "cnic": pad + [c for _, c in kept],
                }
            )
        return out


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
        self._nodes = NodeHistory()
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
        body["balance"] = {
            "snic_max_avg": snic_max_over_avg(body["nodes"]),
            "window_s": RATE_WINDOW_S,
        }
        self._sample(now, done, body)
        body["series"] = list(self._series)
        body["node_series"] = self._nodes.series(len(self._series))
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
                "snic_max_avg": body["balance"]["snic_max_avg"],
            }
        )
        self._nodes.add(body["nodes"])
