"""The worker registry: which SGLang workers exist, what they serve and whether they are healthy.

Each worker is discovered from its `/server_info` (falling back to `/get_server_info`, then
`/v1/models`) and polled on `/health` in the background (active checks: `HealthPolicy`). Each
also has a circuit breaker fed by its real requests (passive checks: `engines.circuit_breaker`).
A worker takes new requests only while it is *usable*: healthy, its breaker letting requests
through, and not draining. Workers can be added and drained at run time; a draining worker is
removed once its last in-flight request ends (`Lease.release`). Listeners (the scheduler) are
told whenever usability may have changed. A failed dependency makes the registry report fewer
workers, it never raises into requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from engines.circuit_breaker import BreakerPolicy, CircuitBreaker
from engines.errors import UpstreamError
from engines.pd_client import UpstreamClient

if TYPE_CHECKING:
    from engines.worker_loads import WorkerLoad

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class HealthPolicy:
    interval_s: float = 2.0
    """How often every worker's `/health` is polled."""
    failure_threshold: int = 2
    """Consecutive failures before a worker is marked unhealthy."""
    success_threshold: int = 1
    """Consecutive successes before an unhealthy worker is used again."""


@dataclass(slots=True)
class Worker:
    url: str
    role: str
    """"prefill" or "decode"."""
    bootstrap_port: int | None = None
    model: str | None = None
    """Served model name, known once discovery succeeded."""
    healthy: bool = False
    failures: int = 0
    successes: int = 0
    info: dict[str, Any] = field(default_factory=dict)
    load: WorkerLoad | None = None
    """The last `/v1/loads` report (`engines.worker_loads.LoadPoller`); None until one arrives."""
    breaker: CircuitBreaker = field(default_factory=CircuitBreaker)
    draining: bool = False
    """Set by `WorkerRegistry.drain`: no new requests; removed when `in_flight` reaches 0."""
    in_flight: int = 0
    """Requests holding a `Lease` on this worker."""

    @property
    def id(self) -> str:
        """A short stable id derived from the URL (the same on every gateway replica)."""
        return hashlib.blake2s(self.url.encode(), digest_size=5).hexdigest()

    @property
    def bootstrap_host(self) -> str:
        """The host part of the worker's URL, as SGLang's router derives it (IPv6 in brackets)."""
        host = urlsplit(self.url).hostname or ""
        return f"[{host}]" if ":" in host else host


def _served_model(info: Any) -> str | None:
    if isinstance(info, dict):
        name = info.get("served_model_name") or info.get("model_path")
        if isinstance(name, str) and name:
            return name
        data = info.get("data")
        if isinstance(data, list) and data and isinstance(data[0], dict):
            model_id = data[0].get("id")
            return model_id if isinstance(model_id, str) else None
    return None


class Lease:
    """One request's hold on one worker: counted in flight until released, and its verdicts told
    to the worker's breaker: a success at most once, a failure at most once (a stream can begin
    well and then break). `release` is idempotent; a lease released without a verdict frees the
    half-open probe slot it may hold."""

    __slots__ = ("_failed", "_ok", "_registry", "probe", "released", "worker")

    def __init__(self, registry: WorkerRegistry, worker: Worker, probe: bool) -> None:
        self._registry = registry
        self.worker = worker
        self.probe = probe
        """Whether this request is the half-open breaker's probe."""
        self._ok = self._failed = False
        self.released = False

    def succeeded(self) -> None:
        if not (self._ok or self._failed):
            self._ok = True
            self._registry.record(self.worker, ok=True)

    def failed(self) -> None:
        if not self._failed:
            self._failed = True
            self._registry.record(self.worker, ok=False)

    def release(self) -> None:
        if not self.released:
            self.released = True
            self._registry.release(self, verdict=self._ok or self._failed)


Listener = Callable[[], None]


class WorkerRegistry:
    def __init__(
        self,
        workers: Iterable[Worker],
        client: UpstreamClient,
        policy: HealthPolicy | None = None,
        breaker: BreakerPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._workers = list(workers)
        self._client = client
        self._policy = policy or HealthPolicy()
        self._breaker = breaker or BreakerPolicy()
        self._clock = clock
        for w in self._workers:
            w.breaker = CircuitBreaker(self._breaker)
        self._task: asyncio.Task[None] | None = None
        self._listeners: list[Listener] = []

    @property
    def all(self) -> list[Worker]:
        return list(self._workers)

    def healthy(self, role: str, model: str) -> list[Worker]:
        """Workers passing their health checks (whatever their breaker and drain state)."""
        return [w for w in self._workers if w.role == role and w.model == model and w.healthy]

    def usable(self, worker: Worker) -> bool:
        """Whether `worker` may take a new request now."""
        return worker.healthy and not worker.draining and worker.breaker.available(self._clock())

    def available(self, role: str, model: str) -> list[Worker]:
        """Workers of a role and model that may take a new request now."""
        return [w for w in self.healthy(role, model) if self.usable(w)]

    def subscribe(self, listener: Listener) -> None:
        """Call `listener` whenever a worker's usability may have changed."""
        self._listeners.append(listener)

    def _changed(self) -> None:
        for listener in self._listeners:
            listener()

    def find(self, key: str) -> Worker | None:
        """The worker with this id or URL (a trailing slash ignored)."""
        url = key.rstrip("/")
        return next((w for w in self._workers if key == w.id or url == w.url), None)

    def add(self, worker: Worker) -> Worker:
        """Register a worker at run time; it is used once `check` finds it healthy."""
        if self.find(worker.url) is not None:
            raise ValueError(f"worker {worker.url} is already registered")
        worker.breaker = CircuitBreaker(self._breaker)
        self._workers.append(worker)
        log.info("worker %s (%s) registered", worker.url, worker.role)
        return worker

    def drain(self, worker: Worker, *, force: bool = False) -> bool:
        """Stop giving `worker` new requests; remove it once idle (now if `force`). True when
        it was removed now."""
        worker.draining = True
        removed = force or worker.in_flight == 0
        if removed:
            self._remove(worker)
        else:
            log.info("worker %s draining (%d in flight)", worker.url, worker.in_flight)
        self._changed()
        return removed

    def _remove(self, worker: Worker) -> None:
        if worker in self._workers:
            self._workers.remove(worker)
            log.info("worker %s removed", worker.url)

    def lease(self, worker: Worker) -> Lease:
        """Count a request in flight on `worker` (the dispatcher releases it when it ends)."""
        worker.in_flight += 1
        now = self._clock()
        was = worker.breaker.available(now)
        worker.breaker.dispatched(now)
        probe = was and not worker.breaker.available(now)
        if probe:  # it took the half-open probe slot: no more requests until its verdict
            log.info("worker %s: probe request after its breaker's cool-down", worker.url)
            self._changed()
        return Lease(self, worker, probe)

    def record(self, worker: Worker, *, ok: bool) -> None:
        """A request's verdict on `worker`, for its breaker."""
        breaker = worker.breaker
        if ok:
            if breaker.succeeded():
                log.info("worker %s: breaker closed", worker.url)
                self._changed()
        elif breaker.failed(self._clock()):
            log.warning(
                "worker %s: breaker open for %gs after %d consecutive failures",
                worker.url,
                breaker.policy.cool_down_s,
                breaker.failures,
            )
            self._changed()

    def release(self, lease: Lease, *, verdict: bool) -> None:
        worker = lease.worker
        worker.in_flight = max(worker.in_flight - 1, 0)
        if lease.probe and not verdict:
            worker.breaker.released()
            self._changed()
        if worker.draining and worker.in_flight == 0 and worker in self._workers:
            self._remove(worker)
            self._changed()

    def models(self) -> list[str]:
        return sorted({w.model for w in self._workers if w.model})

    def ready_models(self) -> list[str]:
        """Models with at least one healthy prefill and one healthy decode worker."""
        return [
            m for m in self.models() if self.healthy("prefill", m) and self.healthy("decode", m)
        ]

    async def start(self) -> None:
        """Check every worker once, then keep polling in the background."""
        await self.check_all()
        self._task = asyncio.create_task(self._poll(), name="worker-health")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def check_all(self) -> None:
        await asyncio.gather(*(self._check(w) for w in self._workers))

    async def check(self, worker: Worker) -> None:
        """Discover and health-check one worker now (a worker registered at run time)."""
        await self._check(worker)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self._policy.interval_s)
            await self.check_all()

    async def _discover(self, worker: Worker) -> None:
        info: Any = None
        for path in ("/server_info", "/get_server_info", "/v1/models"):
            try:
                info = await self._client.request_json("GET", worker.url + path)
            except UpstreamError:
                continue
            if _served_model(info):
                break
        model = _served_model(info)
        if model is None:
            raise UpstreamError(
                f"{worker.url} does not say which model it serves", worker=worker.url
            )
        worker.model = model
        worker.info = info if isinstance(info, dict) else {}
        port = worker.info.get("disaggregation_bootstrap_port")
        if worker.role == "prefill" and worker.bootstrap_port is None and isinstance(port, int):
            worker.bootstrap_port = port

    async def _check(self, worker: Worker) -> None:
        try:
            if worker.model is None:
                await self._discover(worker)
            await self._client.request_json("GET", worker.url + "/health")
        except UpstreamError as exc:
            worker.successes = 0
            worker.failures += 1
            if worker.healthy and worker.failures >= self._policy.failure_threshold:
                log.warning("worker %s is unhealthy: %s", worker.url, exc)
                worker.healthy = False
                self._changed()
            return
        worker.failures = 0
        worker.successes += 1
        if not worker.healthy and worker.successes >= self._policy.success_threshold:
            log.info("worker %s (%s, %s) is healthy", worker.url, worker.role, worker.model)
            worker.healthy = True
            self._changed()
