"""Failover without the network: which failures are retried, how a retry avoids the worker that
failed, how breakers and drains reach the scheduler, and the client-disconnect guard."""

from __future__ import annotations

import asyncio
import gc
import time
import weakref

import pytest
from starlette.types import Message

from engines.circuit_breaker import BreakerPolicy
from engines.errors import UpstreamError, UpstreamTimeout
from engines.worker_registry import Worker, WorkerRegistry
from gateway.errors import (
    ClientClosedRequest,
    InvalidRequest,
    NoHealthyWorker,
    UpstreamFailed,
    UpstreamTimedOut,
)
from gateway.failover import AttemptFailed, Attempts, CancelOnDisconnect
from gateway.scheduler.config import SchedulerConfig
from gateway.scheduler.request import RequestId, SchedRequest
from gateway.scheduling import LiveScheduler
from gateway.settings import SchedulingConfig, load_settings
from gateway.upstream_errors import classify

INFO = {"model_path": "tiny", "dualpath_sim": True}


def _live() -> tuple[LiveScheduler, WorkerRegistry, list[Worker]]:
    workers = [
        Worker("http://p0", "prefill", 1, "m", True, info=dict(INFO)),
        Worker("http://p1", "prefill", 2, "m", True, info=dict(INFO)),
        Worker("http://d0", "decode", None, "m", True, info=dict(INFO)),
        Worker("http://d1", "decode", None, "m", True, info=dict(INFO)),
    ]
    policy = BreakerPolicy(failure_threshold=2, cool_down_s=60)
    registry = WorkerRegistry(workers, client=None, breaker=policy)  # type: ignore[arg-type]
    live = LiveScheduler(registry, SchedulerConfig(policy="round_robin"), SchedulingConfig(5), 3)
    live.sync()
    return live, registry, workers


def _req(rid: str) -> SchedRequest:
    return SchedRequest(RequestId(rid), 0, 64, 16, time.monotonic(), 4.0, 0.5)


@pytest.mark.parametrize(
    ("exc", "fault", "retry"),
    [
        (UpstreamError("refused", phase="connect"), True, True),
        (UpstreamError("reset", phase="head"), True, True),
        (UpstreamTimeout("connect", phase="connect"), True, True),
        (UpstreamTimeout("no head", phase="first_byte"), True, False),
        (UpstreamTimeout("silent", phase="chunk"), True, False),
        (UpstreamFailed("decode worker answered 500"), True, True),
        (InvalidRequest("bad prompt"), False, False),
    ],
)
def test_which_failures_are_the_workers_and_which_are_retried(
    exc: UpstreamError | InvalidRequest, fault: bool, retry: bool
) -> None:
    assert classify(exc) == (fault, retry)


async def test_a_retry_avoids_the_workers_that_failed_it() -> None:
    live, _, workers = _live()
    attempts = Attempts(RequestId("t"), max_attempts=3)
    wanted = attempts.retry(AttemptFailed(UpstreamFailed("x"), workers[2], True), _req("t"))
    assert wanted.rid == "t~2" and attempts.excluded == {"http://d0"}
    for i in range(4):  # round robin would alternate: the excluded one sits out
        _, pair = await live.place("m", _req(f"{wanted.rid}-{i}"), attempts.excluded)
        assert pair.decode.url == "http://d1"
        live.finished("m", f"{wanted.rid}-{i}", 1)
    _, pair = await live.place("m", _req("other-0"))
    _, pair2 = await live.place("m", _req("other-1"))
    assert {pair.decode.url, pair2.decode.url} == {"http://d0", "http://d1"}  # back for others


async def test_a_retry_with_no_other_worker_left_gets_no_placement() -> None:
    live, _, _ = _live()
    with pytest.raises(NoHealthyWorker):
        await live.place("m", _req("r"), frozenset({"http://d0", "http://d1"}))
    assert live.explain(0)["models"]["m"]["held"] == 0


def test_tries_are_bounded_and_a_non_retryable_failure_ends_them() -> None:
    attempts = Attempts(RequestId("t"), max_attempts=2)
    failed = AttemptFailed(UpstreamFailed("boom"), None, True)
    wanted = attempts.retry(failed, _req("t"))
    with pytest.raises(UpstreamFailed, match="boom"):
        attempts.retry(failed, wanted)
    timeout = AttemptFailed(UpstreamTimedOut("slow"), None, False)
    with pytest.raises(UpstreamTimedOut):
        Attempts(RequestId("u"), max_attempts=3).retry(timeout, _req("u"))


async def test_an_open_breaker_or_a_drain_takes_the_worker_out_of_scheduling() -> None:
    live, registry, workers = _live()
    d0 = workers[2]
    for _ in range(2):
        lease = registry.lease(d0)
        lease.failed()
        lease.release()
    engines = live.cluster("m").engines
    assert not engines["http://d0"].healthy  # told at once, no poll needed
    registry.drain(workers[3])  # idle: removed
    assert not engines["http://d1"].healthy
    with pytest.raises(NoHealthyWorker, match="decode"):
        await live.place("m", _req("none"))
    registry.add(Worker("http://d1", "decode", None, "m", True, info=dict(INFO)))
    live.sync()
    _, pair = await live.place("m", _req("back"))
    assert pair.decode.url == "http://d1" and pair.decode is registry.find("http://d1")


async def test_a_client_disconnect_cancels_the_block_as_a_499() -> None:
    gone = asyncio.Event()

    async def receive() -> Message:
        await gone.wait()
        return {"type": "http.disconnect"}

    async def slow() -> None:
        async with CancelOnDisconnect(receive):
            asyncio.get_running_loop().call_later(0.05, gone.set)
            await asyncio.sleep(30)

    with pytest.raises(ClientClosedRequest) as caught:
        await asyncio.wait_for(slow(), 5)
    assert caught.value.status == 499
    assert not asyncio.current_task().cancelling()  # type: ignore[union-attr]


async def test_no_disconnect_no_effect_and_outer_cancellation_stays_a_cancellation() -> None:
    never = asyncio.Event()

    async def receive() -> Message:
        await never.wait()
        return {"type": "http.disconnect"}

    async with CancelOnDisconnect(receive):
        await asyncio.sleep(0)

    async def blocked() -> None:
        async with CancelOnDisconnect(receive):
            await asyncio.sleep(30)

    task = asyncio.create_task(blocked())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_the_guard_leaves_no_reference_cycle_behind() -> None:
    """Its watcher task, cancelled on the way out, must be freed when it ends: kept by the guard
    its cancellation's traceback holds, it cost every request ~30 objects of cyclic GC."""
    never = asyncio.Event()

    async def receive() -> Message:
        await never.wait()
        return {"type": "http.disconnect"}

    gc.collect()
    gc.disable()
    try:
        async with CancelOnDisconnect(receive) as guard:
            watcher = weakref.ref(guard._watcher)  # type: ignore[arg-type]
            await asyncio.sleep(0)
        del guard
        for _ in range(3):  # the watcher's cancellation runs on the loop
            await asyncio.sleep(0)
        assert watcher() is None
    finally:
        gc.enable()


def test_the_knobs_are_read_from_the_environment() -> None:
    settings = load_settings(
        env={
            "DUALPATH_BREAKER_FAILURE_THRESHOLD": "7",
            "DUALPATH_BREAKER_COOL_DOWN_S": "1.5",
            "DUALPATH_RETRY_MAX_ATTEMPTS": "1",
            "DUALPATH_SHUTDOWN_TIMEOUT_S": "3",
            "DUALPATH_TIMEOUTS_CONNECT_S": "0.25",
            "DUALPATH_TIMEOUTS_FIRST_BYTE_S": "9",
            "DUALPATH_TIMEOUTS_BETWEEN_CHUNKS_S": "4",
            "DUALPATH_HEALTH_FAILURE_THRESHOLD": "5",
        }
    )
    assert settings.breaker == BreakerPolicy(failure_threshold=7, cool_down_s=1.5)
    assert settings.retry.max_attempts == 1 and settings.shutdown_timeout_s == 3.0
    timeouts = settings.timeouts
    assert (timeouts.connect_s, timeouts.first_byte_s, timeouts.between_chunks_s) == (0.25, 9, 4)
    assert settings.health.failure_threshold == 5
