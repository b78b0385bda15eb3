"""The worker registry: which SGLang workers exist, what they serve and whether they are healthy.

Each worker is discovered from its `/server_info` (falling back to `/get_server_info`, then
`/v1/models`) and polled on `/health` in the background. A worker is used only while healthy;
a failed dependency makes the registry report fewer workers, it never raises into requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

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


class WorkerRegistry:
    def __init__(
        self,
        workers: Iterable[Worker],
        client: UpstreamClient,
        policy: HealthPolicy | None = None,
    ) -> None:
        self._workers = list(workers)
        self._client = client
        self._policy = policy or HealthPolicy()
        self._task: asyncio.Task[None] | None = None

    @property
    def all(self) -> list[Worker]:
        return list(self._workers)

    def healthy(self, role: str, model: str) -> list[Worker]:
        return [w for w in self._workers if w.role == role and w.model == model and w.healthy]

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
            return
        worker.failures = 0
        worker.successes += 1
        if not worker.healthy and worker.successes >= self._policy.success_threshold:
            log.info("worker %s (%s, %s) is healthy", worker.url, worker.role, worker.model)
            worker.healthy = True
