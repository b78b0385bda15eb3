"""What each worker reports about its load, polled from SGLang's `/v1/loads` on a short interval.

The scheduler keeps its own optimistic view of every engine (updated at dispatch) and reconciles it
with these reports. A stock SGLang worker reports requests and KV tokens; ours also report their
node's link queues (`dualpath.read_q_bytes`, `cnic_q_bytes`) and what the links moved
(`snic_moved_bytes`, `cnic_moved_bytes`), None elsewhere. A worker that does not answer keeps its
last report (with its age in `at`); the health check decides whether it is used at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from engines.errors import UpstreamError
from engines.pd_client import UpstreamClient
from engines.worker_registry import Worker

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class WorkerLoad:
    at: float
    """`time.monotonic()` when it was read."""
    running: int
    waiting: int
    used_tokens: int
    max_tokens: int
    read_q_bytes: float | None = None
    """Modelled bytes queued on the node's storage NIC; None when the worker does not say."""
    cnic_q_bytes: float | None = None
    snic_moved_bytes: float | None = None
    """Modelled bytes the node's storage NIC has moved since the worker started (a counter, for
    utilisation); None when the worker does not say."""
    cnic_moved_bytes: float | None = None


def _number(rank: Mapping[str, Any], key: str) -> float:
    value = rank.get(key, 0)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


def _counter(links: list[dict[str, Any]], key: str) -> float | None:
    """Summed over the ranks that report it; None when none does (older workers)."""
    reported = [d for d in links if key in d]
    return sum(_number(d, key) for d in reported) if reported else None


def parse_loads(body: Any, at: float) -> WorkerLoad | None:
    """A `/v1/loads` body summed over its data-parallel ranks; None if it is not one."""
    ranks = body.get("loads") if isinstance(body, dict) else None
    if not isinstance(ranks, list) or not ranks or not all(isinstance(r, dict) for r in ranks):
        return None
    links = [r["dualpath"] for r in ranks if isinstance(r.get("dualpath"), dict)]

    def total(key: str) -> int:
        return int(sum(_number(r, key) for r in ranks))

    return WorkerLoad(
        at=at,
        running=total("num_running_reqs"),
        waiting=total("num_waiting_reqs"),
        used_tokens=total("num_used_tokens"),
        max_tokens=total("max_total_num_tokens"),
        read_q_bytes=sum(_number(d, "read_q_bytes") for d in links) if links else None,
        cnic_q_bytes=sum(_number(d, "cnic_q_bytes") for d in links) if links else None,
        snic_moved_bytes=_counter(links, "snic_moved_bytes"),
        cnic_moved_bytes=_counter(links, "cnic_moved_bytes"),
    )


class LoadPoller:
    """Reads every healthy worker's `/v1/loads` each `interval_s` into `Worker.load`."""

    def __init__(
        self,
        workers: Callable[[], Iterable[Worker]],
        client: UpstreamClient,
        interval_s: float = 0.25,
        clock: Callable[[], float] = time.monotonic,
        on_poll: Callable[[], None] | None = None,
    ) -> None:
        self._workers = workers
        self._client = client
        self._interval_s = interval_s
        self._clock = clock
        self._on_poll = on_poll
        """Called after every round (the scheduler reconciles its state from the reports)."""
        self._task: asyncio.Task[None] | None = None

    async def poll_once(self) -> None:
        await asyncio.gather(*(self._read(w) for w in self._workers() if w.healthy))

    async def _read(self, worker: Worker) -> None:
        try:
            body = await self._client.request_json("GET", worker.url + "/v1/loads")
        except UpstreamError as exc:
            log.debug("no load from %s: %s", worker.url, exc)
            return
        load = parse_loads(body, self._clock())
        if load is not None:
            worker.load = load

    async def _loop(self) -> None:
        while True:
            try:
                await self.poll_once()
                if self._on_poll is not None:
                    self._on_poll()
            except Exception:  # a bug must not end the polling for good
                log.exception("reading worker loads failed")
            await asyncio.sleep(self._interval_s)

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="worker-loads")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
