"""The gateway's Prometheus metrics (`GET /metrics`), all named `dualpath_*`, on a registry owned
by one app.

Two kinds:

- **Recorded** as requests flow (`GatewayMetrics`): requests by route and status, TTFT/TPOT/E2E,
  the time the gateway itself spends per stage, queue wait, read-path decisions, session hits and
  misses, prompt / KV-hit / completion tokens. Each record is one or two prometheus-client calls
  on label children cached in plain dicts: no lock of ours on the hot path.
- **Read at scrape time** (`_LiveCollector`) from the state the registry, the load poller and the
  schedulers already keep (`gateway.live_state`): queue depth, sheds and holds, per-engine load,
  per-node storage/compute NIC utilisation and queues, sessions. Nothing is counted twice.

Labels are bounded: `model` only after the model was found in the registry, `engine`/`node` from
the registry, `route` from the app's route templates, `stage` and `read_path` from fixed sets.
Never a session or a request.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.live_state import LiveSnapshot, LiveState
from gateway.pd_dispatch import Completed
from gateway.scheduler.decision import Decision
from session.tracker import TurnPlan

STAGES = ("parse", "session", "kv_lookup", "schedule", "dispatch")
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0)
"""TTFT, E2E and queue wait: 10 ms to 60 s, with the paper's 4 s TTFT target as a bound."""
TPOT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 60.0)
"""Per output token: finer, around the 50 ms target."""
STAGE_BUCKETS = (1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.05, 0.25, 1.0)
"""Gateway overhead: microseconds normally, a KV look-up up to its timeout."""
RECENT_SAMPLES = 4096
"""Recent TTFT and TPOT values kept for the dashboard's percentiles."""
ACTIVE_WINDOW_S = 60.0
"""A session is active while it sent a turn within this long."""
MAX_ACTIVE = 100_000
"""Sessions tracked as active, least recent dropped first."""


class ActiveSessions:
    """Sessions that sent a turn in the last `window_s`: the one state the gateway has no other
    place for. An ordered map by last turn, so expiring is popping from the front."""

    def __init__(self, window_s: float = ACTIVE_WINDOW_S, limit: int = MAX_ACTIVE) -> None:
        self._window_s = window_s
        self._limit = limit
        self._last: OrderedDict[tuple[str, str], float] = OrderedDict()

    def touch(self, key: tuple[str, str], now: float) -> None:
        self._last[key] = now
        self._last.move_to_end(key)
        if len(self._last) > self._limit:
            self._last.popitem(last=False)

    def count(self, now: float) -> int:
        horizon = now - self._window_s
        while self._last and next(iter(self._last.values())) < horizon:
            self._last.popitem(last=False)
        return len(self._last)


class GatewayMetrics:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.registry = CollectorRegistry()
        r = self.registry
        self._requests = Counter(
            "dualpath_requests",
            "HTTP requests by route and status",
            ["route", "status"],
            registry=r,
        )
        self._ttft = _histogram(r, "dualpath_ttft_seconds", "Time to first token", LATENCY_BUCKETS)
        self._tpot = _histogram(r, "dualpath_tpot_seconds", "Time per output token", TPOT_BUCKETS)
        self._e2e = _histogram(r, "dualpath_e2e_seconds", "Request end to end", LATENCY_BUCKETS)
        self._wait = _histogram(
            r,
            "dualpath_queue_wait_seconds",
            "Held in the gateway before placement",
            LATENCY_BUCKETS,
        )
        stage = Histogram(
            "dualpath_stage_seconds",
            "Time the gateway spends per stage of a request (not upstream time)",
            ["stage"],
            buckets=STAGE_BUCKETS,
            registry=r,
        )
        self._stages = {name: stage.labels(name) for name in STAGES}
        self._read_paths = _counter(r, "dualpath_read_path_decisions", "Decisions", "read_path")
        self._session_hits = _counter(r, "dualpath_session_hits", "Turns of a known session")
        self._session_misses = _counter(r, "dualpath_session_misses", "Turns starting a session")
        self._prompt = _counter(r, "dualpath_prompt_tokens", "Prompt tokens (worker usage)")
        self._hit = _counter(r, "dualpath_kv_hit_tokens", "Prompt tokens loaded from KV cache")
        self._completion = _counter(r, "dualpath_completion_tokens", "Tokens generated")
        self._children: dict[tuple[Any, ...], Any] = {}
        """Label children by (metric, labels...): bounded by the label sets above."""
        self.recent_ttft: deque[tuple[float, float]] = deque(maxlen=RECENT_SAMPLES)
        """(monotonic time, seconds) of recent requests, for the dashboard's percentiles."""
        self.recent_tpot: deque[tuple[float, float]] = deque(maxlen=RECENT_SAMPLES)
        self.active = ActiveSessions()
        self.live: LiveState | None = None
        self.trace_spans: Callable[[], tuple[int, int]] | None = None
        """(shipped, dropped) spans of the span-export channel, when tracing is on."""
        self.registry.register(_LiveCollector(self))

    def attach(self, live: LiveState) -> None:
        """Read `live` at every scrape (the app's lifespan calls this once its state exists)."""
        self.live = live

    def _child(self, metric: Counter | Histogram, *labels: str) -> Any:
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    # --- recording -----------------------------------------------------------------------------

    def request(self, route: str, status: int) -> None:
        self._child(self._requests, route, str(status)).inc()

    def stage(self, name: str, since: float) -> float:
        """Observe the stage `name` as `since` → now; return now, the next stage's start."""
        now = self._clock()
        self._stages[name].observe(now - since)
        return now

    def stage_seconds(self, name: str, seconds: float) -> None:
        self._stages[name].observe(seconds)

    def session_turn(self, plan: TurnPlan) -> None:
        """A chat turn matched to its session: a hit when the session had earlier turns (the
        tracker found its record, so it knows their mean output), else a miss."""
        known = plan.expected_output_tokens is not None
        self._child(self._session_hits if known else self._session_misses, plan.model).inc()
        self.active.touch((plan.tenant, plan.session_id), self._clock())

    def placed(self, model: str, decision: Decision, since: float) -> None:
        """The scheduler placed a request whose scheduling began at `since`: the time up to the
        decision is queue wait (microseconds unless it was held), the rest of `place` is the
        gateway's schedule stage (the policy's work and the hand-back)."""
        now = self._clock()
        waited = min(max(decision.at - since, 0.0), now - since)
        self._child(self._wait, model).observe(waited)
        self._stages["schedule"].observe(now - since - waited)
        self._child(self._read_paths, model, decision.read_path).inc()

    def finished(self, model: str, started_at: float, done: Completed) -> None:
        """A request the decode worker finished: its latencies and the worker's usage."""
        usage = done.usage or {}
        output = _int(usage.get("completion_tokens"))
        self._child(self._e2e, model).observe(done.ended_at - started_at)
        if done.first_chunk_at is not None:
            ttft = done.first_chunk_at - started_at
            self._child(self._ttft, model).observe(ttft)
            self.recent_ttft.append((done.ended_at, ttft))
            if output > 1:
                tpot = (done.ended_at - done.first_chunk_at) / (output - 1)
                self._child(self._tpot, model).observe(tpot)
                self.recent_tpot.append((done.ended_at, tpot))
        details = usage.get("prompt_tokens_details")
        cached = _int(details.get("cached_tokens")) if isinstance(details, dict) else 0
        self._child(self._prompt, model).inc(_int(usage.get("prompt_tokens")))
        self._child(self._hit, model).inc(cached)
        self._child(self._completion, model).inc(output)

    def active_sessions(self) -> int:
        return self.active.count(self._clock())

    def render(self) -> bytes:
        return generate_latest(self.registry)


def _histogram(
    registry: CollectorRegistry, name: str, doc: str, buckets: tuple[float, ...]
) -> Histogram:
    return Histogram(name, doc, ["model"], buckets=buckets, registry=registry)


def _counter(registry: CollectorRegistry, name: str, doc: str, *extra: str) -> Counter:
    return Counter(name, doc, ["model", *extra], registry=registry)


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


class _LiveCollector(Collector):
    """The families that mirror live state, read from one snapshot per scrape."""

    def __init__(self, metrics: GatewayMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        live = self._metrics.live
        if live is None:
            return
        snap = live.snapshot()
        yield from _model_families(snap)
        yield from _engine_families(snap)
        yield from _node_families(snap)
        active = GaugeMetricFamily(
            "dualpath_active_sessions", f"Sessions with a turn in the last {ACTIVE_WINDOW_S:g}s"
        )
        active.add_metric([], self._metrics.active_sessions())
        yield active
        if self._metrics.trace_spans is not None:
            spans = CounterMetricFamily(
                "dualpath_trace_spans",
                "Trace spans handed to the span-export process, or dropped (it fell behind)",
                labels=["outcome"],
            )
            shipped, dropped = self._metrics.trace_spans()
            spans.add_metric(["shipped"], shipped)
            spans.add_metric(["dropped"], dropped)
            yield spans
        if snap.sessions_stored is not None:
            yield GaugeMetricFamily(
                "dualpath_sessions_stored", "Sessions in the in-process store", snap.sessions_stored
            )


def _model_families(snap: LiveSnapshot) -> Iterator[Metric]:
    depth = GaugeMetricFamily("dualpath_queue_depth", "Requests held", labels=["model"])
    sheds = CounterMetricFamily("dualpath_sheds", "Requests shed (429)", labels=["model"])
    holds = CounterMetricFamily(
        "dualpath_holds", "Scheduling rounds that ended on a held request", labels=["model"]
    )
    for m in snap.models:
        depth.add_metric([m.model], m.queue_depth)
        sheds.add_metric([m.model], m.sheds)
        holds.add_metric([m.model], m.holds)
    yield from (depth, sheds, holds)


_ENGINE_GAUGES = (
    ("running", "dualpath_engine_running_requests", "Requests running (last load report)"),
    ("queued", "dualpath_engine_queued_requests", "Requests waiting (last load report)"),
    ("tokens", "dualpath_engine_tokens", "KV tokens in use (last load report)"),
    ("max_tokens", "dualpath_engine_max_tokens", "KV pool size in tokens"),
)

_NODE_GAUGES = (
    ("snic_utilization", "dualpath_snic_utilization", "Storage NIC utilisation (0-1), ~2 s"),
    ("cnic_utilization", "dualpath_cnic_utilization", "Compute NIC utilisation (0-1), ~2 s"),
    ("snic_queue_s", "dualpath_snic_queue_seconds", "Seconds of reads queued on the storage NIC"),
    ("cnic_queue_s", "dualpath_cnic_queue_seconds", "Seconds of KV queued on the compute NIC"),
    ("snic_queue_bytes", "dualpath_snic_queue_bytes", "Modelled bytes queued on the storage NIC"),
    ("cnic_queue_bytes", "dualpath_cnic_queue_bytes", "Modelled bytes queued on the compute NIC"),
)

_NODE_COUNTERS = (
    ("snic_moved_bytes", "dualpath_snic_read_bytes", "Modelled bytes read by the storage NIC"),
    ("cnic_moved_bytes", "dualpath_cnic_received_bytes", "Modelled bytes in on the compute NIC"),
)


def _engine_families(snap: LiveSnapshot) -> Iterator[Metric]:
    labels = ["engine", "role", "model"]
    healthy = GaugeMetricFamily("dualpath_engine_healthy", "1 if the engine is used", labels=labels)
    for e in snap.engines:
        healthy.add_metric([e.url, e.role, e.model], float(e.healthy))
    yield healthy
    for field, name, doc in _ENGINE_GAUGES:
        family = GaugeMetricFamily(name, doc, labels=labels)
        for e in snap.engines:
            value = getattr(e, field)
            if value is not None:
                family.add_metric([e.url, e.role, e.model], value)
        yield family


def _node_families(snap: LiveSnapshot) -> Iterator[Metric]:
    labels = ["node", "role"]
    specs = [(f, GaugeMetricFamily(n, d, labels=labels)) for f, n, d in _NODE_GAUGES]
    specs += [(f, CounterMetricFamily(n, d, labels=labels)) for f, n, d in _NODE_COUNTERS]
    for field, family in specs:
        for node in snap.nodes:
            value = getattr(node, field)
            if value is not None:
                family.add_metric([node.node, node.role], value)
        yield family


class RequestCounter:
    """Pure ASGI middleware: counts every HTTP response by its route template and status (a
    stream when it ends; one that fails before its head as 500, as the server answers it)."""

    def __init__(self, app: ASGIApp, metrics: GatewayMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            # The router put the matched route in the scope: its template keeps labels bounded.
            route = getattr(scope.get("route"), "path", None)
            self.metrics.request(route if isinstance(route, str) else "unmatched", status)
