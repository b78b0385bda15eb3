"""The scheduler in real time: placement, holding, shedding and timeouts, on registry workers
(no HTTP: the registry is filled by hand, as discovery would)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from engines.worker_registry import Worker, WorkerRegistry
from gateway.engine_costs import cost_for, read_paths_of
from gateway.errors import NoHealthyWorker, Overloaded
from gateway.scheduler.config import SchedulerConfig
from gateway.scheduler.request import RequestId, SchedRequest
from gateway.scheduling import LiveScheduler
from gateway.settings import SchedulingConfig

SIM_INFO: dict[str, Any] = {
    "model_path": "tiny",
    "dualpath_sim": True,
    "dualpath_time_scale": 0.5,
    "dualpath_kv": {"read_paths": ["pe", "de", "split"], "snic_bytes_per_s": 2e9},
}


def _workers(info: dict[str, Any] | None = None) -> list[Worker]:
    return [
        Worker("http://p0", "prefill", 1, "m", True, info=dict(info or SIM_INFO)),
        Worker("http://d0", "decode", None, "m", True, info=dict(info or SIM_INFO)),
        Worker("http://d1", "decode", None, "m", True, info=dict(info or SIM_INFO)),
    ]


def _live(workers: list[Worker], **config: Any) -> LiveScheduler:
    hold = config.pop("hold_timeout_s", 5.0)
    registry = WorkerRegistry(workers, client=None)  # type: ignore[arg-type]  # never polled
    live = LiveScheduler(registry, SchedulerConfig(**config), SchedulingConfig(hold), 3)
    live.sync()
    return live


def _req(rid: str, hit: int = 512) -> SchedRequest:
    now = time.monotonic()
    return SchedRequest(RequestId(rid), hit, 64, 16, now, 4.0, 0.5)


def test_cost_and_read_paths_come_from_the_workers_server_info() -> None:
    sim, stock = _workers()[0], Worker("http://s", "prefill", info={"model_path": "org/Big"})
    cost = cost_for(sim, "ds-v3.2-660b")
    assert cost.model.model.name == "tiny" and cost.time_scale == 0.5
    assert cost.snic_bytes_per_s == 4e9  # 2 GB/s, modelled at half speed
    assert cost.prefill_compute_s(64, 0) == 0.5 * cost.model.prefill_compute_s(64, 0)
    assert read_paths_of(sim) == {"pe", "de", "split"}
    fallback = cost_for(stock, "ds-v3.2-660b")
    assert fallback.model.model.name == "ds-v3.2-660b" and fallback.time_scale == 1.0
    assert read_paths_of(stock) == {"pe"}


async def test_a_request_is_placed_at_once_on_an_idle_cluster() -> None:
    live = _live(_workers())
    decision, pair = await live.place("m", _req("a"))
    assert pair.prefill.url == "http://p0" and pair.decode.url in ("http://d0", "http://d1")
    assert decision.prefill == "http://p0"
    view = live.explain(10)["models"]["m"]
    assert view["decisions"][0]["rid"] == "a" and view["held"] == 0
    assert {e["id"] for e in view["engines"]} == {"http://p0", "http://d0", "http://d1"}
    live.first_token("m", "a")
    live.finished("m", "a", 16)
    assert all(e["seq"] == 0 for e in live.explain(0)["models"]["m"]["engines"])


async def test_a_held_request_goes_when_the_prefill_engine_frees_up() -> None:
    live = _live(_workers())
    p0 = live.cluster("m").engines["http://p0"]
    p0.compute_free_at = time.monotonic() + 10.0  # 10 s of work queued: no way to meet 4 s
    task = asyncio.create_task(live.place("m", _req("held")))
    await asyncio.sleep(0)
    assert live.explain(0)["models"]["m"]["held"] == 1
    assert "TTFT" in live.explain(0)["models"]["m"]["last_hold"]
    p0.compute_free_at = 0.0
    live.first_token("m", "someone-else")  # any event runs the scheduler
    decision, _ = await asyncio.wait_for(task, 5)
    assert decision.rid == "held" and decision.waited_s > 0


async def test_a_request_predicted_to_wait_too_long_is_shed_with_retry_after() -> None:
    live = _live(_workers(), max_wait_s=5.0)
    p0 = live.cluster("m").engines["http://p0"]
    p0.compute_free_at = time.monotonic() + 60.0
    with pytest.raises(Overloaded) as caught:
        await live.place("m", _req("shed"))
    assert caught.value.status == 429
    assert 50 <= int(caught.value.headers["Retry-After"]) <= 61


async def test_a_request_held_past_the_timeout_gets_503_and_leaves_the_queue() -> None:
    live = _live(_workers(), hold_timeout_s=0.2)
    p0 = live.cluster("m").engines["http://p0"]
    p0.compute_free_at = time.monotonic() + 10.0
    with pytest.raises(NoHealthyWorker, match=r"no placement within 0\.2s"):
        await live.place("m", _req("late"))
    assert live.explain(0)["models"]["m"]["held"] == 0


async def test_a_client_gone_while_held_leaves_nothing_behind() -> None:
    live = _live(_workers())
    p0 = live.cluster("m").engines["http://p0"]
    p0.compute_free_at = time.monotonic() + 10.0
    task = asyncio.create_task(live.place("m", _req("gone")))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert live.explain(0)["models"]["m"]["held"] == 0


async def test_no_healthy_worker_is_503_before_anything_is_held() -> None:
    workers = _workers()
    for w in workers[1:]:
        w.healthy = False
    live = _live(workers)
    with pytest.raises(NoHealthyWorker, match="decode"):
        await live.place("m", _req("x"))


async def test_a_worker_turning_unhealthy_is_not_chosen_after_the_next_sync() -> None:
    workers = _workers()
    live = _live(workers)
    workers[1].healthy = False
    live.sync()
    for i in range(4):
        _, pair = await live.place("m", _req(f"r{i}"))
        assert pair.decode.url == "http://d1"
