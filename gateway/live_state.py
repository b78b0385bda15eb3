"""The cluster as `/metrics` and the dashboard see it: one snapshot read from live state.

Nothing here keeps a second copy of what the registry, the load poller and the schedulers already
know: a snapshot reads them when asked (at scrape time). The one thing they do not know is a rate,
so `LinkRates` keeps the last few storage/compute-NIC byte counters of each node's load reports to
turn them into utilisation.

A *node* is the machine of one worker (in the paper a node hosts one engine), named by the
worker's URL; its links are known only from workers that report them (ours, in `/v1/loads` under
`dualpath`), and their seconds of queue use the bandwidths the scheduler's cost model has for it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sized
from dataclasses import dataclass

from engines.worker_loads import WorkerLoad
from engines.worker_registry import Worker, WorkerRegistry
from gateway.scheduler.scheduler import Scheduler

RATE_WINDOW_S = 2.0
"""Utilisation is the bytes moved over (at least) this many seconds of load reports."""
RATE_SAMPLES = 64
"""Reports kept per node: enough for the window at the 0.25 s poll, bounded whatever the rate."""


@dataclass(frozen=True, slots=True)
class EngineView:
    url: str
    role: str
    model: str
    """Empty until the worker has been discovered."""
    healthy: bool
    running: int | None
    """From the worker's last load report; None until one arrives."""
    queued: int | None
    tokens: int | None
    """KV tokens in use."""
    max_tokens: int | None


@dataclass(frozen=True, slots=True)
class NodeView:
    node: str
    role: str
    snic_utilization: float | None
    """Fraction of the storage NIC's bandwidth used over the last `RATE_WINDOW_S` (0..1)."""
    cnic_utilization: float | None
    snic_queue_s: float | None
    """Seconds the bytes queued on the storage NIC take to move (None: bandwidth unknown)."""
    cnic_queue_s: float | None
    snic_queue_bytes: float | None
    """Modelled bytes queued, as the worker reports them."""
    cnic_queue_bytes: float | None
    snic_moved_bytes: float | None
    """Counters since the worker started."""
    cnic_moved_bytes: float | None


@dataclass(frozen=True, slots=True)
class ModelView:
    model: str
    queue_depth: int
    """Requests the gateway holds for this model."""
    sheds: int
    holds: int
    """Scheduling rounds that ended on a held head."""


@dataclass(frozen=True, slots=True)
class LiveSnapshot:
    policy: str
    engines: tuple[EngineView, ...]
    nodes: tuple[NodeView, ...]
    models: tuple[ModelView, ...]
    sessions_stored: int | None
    """Sessions in the in-process store; None when the store cannot say cheaply (Redis)."""


class LinkRates:
    """Per node, the recent (time, storage bytes moved, compute bytes moved) of its reports."""

    def __init__(self, window_s: float = RATE_WINDOW_S, samples: int = RATE_SAMPLES) -> None:
        self._window_s = window_s
        self._samples = samples
        self._seen: dict[str, deque[tuple[float, float, float]]] = {}

    def observe(self, node: str, load: WorkerLoad) -> None:
        if load.snic_moved_bytes is None or load.cnic_moved_bytes is None:
            return
        ring = self._seen.get(node)
        if ring is None:
            ring = self._seen[node] = deque(maxlen=self._samples)
        if not ring or load.at > ring[-1][0]:
            ring.append((load.at, load.snic_moved_bytes, load.cnic_moved_bytes))

    def rates(self, node: str) -> tuple[float, float] | None:
        """Bytes per second on (storage, compute) between the newest report and the newest one
        at least a window older (else the oldest kept); None before two reports."""
        ring = self._seen.get(node)
        if ring is None or len(ring) < 2:
            return None
        newest = ring[-1]
        base = ring[0]
        for sample in reversed(ring):
            if newest[0] - sample[0] >= self._window_s:
                base = sample
                break
        span = newest[0] - base[0]
        if span <= 0:
            return None
        return (newest[1] - base[1]) / span, (newest[2] - base[2]) / span

    def forget_except(self, nodes: Iterable[str]) -> None:
        """Drop nodes no longer in the registry, so the map stays bounded by it."""
        keep = set(nodes)
        for node in [n for n in self._seen if n not in keep]:
            del self._seen[node]


class LiveState:
    """Reads the registry, the workers' load reports and the schedulers into a `LiveSnapshot`."""

    def __init__(
        self,
        registry: WorkerRegistry,
        schedulers: Callable[[], Mapping[str, Scheduler]],
        policy: str,
        session_store: object | None = None,
    ) -> None:
        self._registry = registry
        self._schedulers = schedulers
        self.policy = policy
        self._store = session_store
        self.rates = LinkRates()

    def snapshot(self) -> LiveSnapshot:
        workers = self._registry.all
        schedulers = self._schedulers()
        self.rates.forget_except(w.url for w in workers)
        stored = len(self._store) if isinstance(self._store, Sized) else None
        return LiveSnapshot(
            policy=self.policy,
            engines=tuple(_engine(w) for w in workers),
            nodes=tuple(n for w in workers if (n := self._node(w, schedulers)) is not None),
            models=tuple(_model(m, s) for m, s in sorted(schedulers.items())),
            sessions_stored=stored,
        )

    def _node(self, worker: Worker, schedulers: Mapping[str, Scheduler]) -> NodeView | None:
        load = worker.load
        if load is None or load.read_q_bytes is None:
            return None  # a stock worker says nothing about its links
        self.rates.observe(worker.url, load)
        snic_bps = cnic_bps = None
        sched = schedulers.get(worker.model or "")
        engine = sched.cluster.engines.get(worker.url) if sched is not None else None
        if engine is not None:  # bandwidth per wall-clock second (a sim's time scale applied)
            snic_bps, cnic_bps = engine.cost.snic_bytes_per_s, engine.cost.cnic_bytes_per_s
        rates = self.rates.rates(worker.url)
        return NodeView(
            node=worker.url,
            role=worker.role,
            snic_utilization=_fraction(rates[0], snic_bps) if rates else None,
            cnic_utilization=_fraction(rates[1], cnic_bps) if rates else None,
            snic_queue_s=_seconds(load.read_q_bytes, snic_bps),
            cnic_queue_s=_seconds(load.cnic_q_bytes, cnic_bps),
            snic_queue_bytes=load.read_q_bytes,
            cnic_queue_bytes=load.cnic_q_bytes,
            snic_moved_bytes=load.snic_moved_bytes,
            cnic_moved_bytes=load.cnic_moved_bytes,
        )


def _engine(w: Worker) -> EngineView:
    load = w.load
    return EngineView(
        url=w.url,
        role=w.role,
        model=w.model or "",
        healthy=w.healthy,
        running=load.running if load else None,
        queued=load.waiting if load else None,
        tokens=load.used_tokens if load else None,
        max_tokens=load.max_tokens if load else None,
    )


def _model(model: str, sched: Scheduler) -> ModelView:
    return ModelView(model, sched.held, sched.counters.shed, sched.counters.holds)


def _fraction(bytes_per_s: float, capacity: float | None) -> float | None:
    if capacity is None or not 0 < capacity < float("inf"):
        return None
    # Bytes count when a transfer ends, so a short window can see more than the link's rate.
    return min(max(bytes_per_s / capacity, 0.0), 1.0)


def _seconds(queued: float | None, capacity: float | None) -> float | None:
    if queued is None or capacity is None or not capacity > 0:
        return None
    return queued / capacity  # an infinite capacity (time scale 0) is 0 s
