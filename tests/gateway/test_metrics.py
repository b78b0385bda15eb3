"""The gateway's `/metrics`: what is recorded per request, what is read from live state at scrape
time, and that every label set is bounded (no HTTP to workers: the registry is filled by hand)."""

from __future__ import annotations

import time
from typing import Any

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from engines.worker_loads import WorkerLoad
from engines.worker_registry import Worker, WorkerRegistry
from gateway.app import create_app
from gateway.dashboard_data import Dashboard
from gateway.live_state import LinkRates, LiveState
from gateway.metrics import ActiveSessions, GatewayMetrics
from gateway.pd_dispatch import Completed
from gateway.scheduler.config import SchedulerConfig
from gateway.scheduler.decision import Decision, EngineId
from gateway.scheduler.request import RequestId
from gateway.scheduling import LiveScheduler
from gateway.settings import SchedulingConfig, load_settings
from session.memory_store import MemorySessionStore

Values = dict[tuple[str, tuple[tuple[str, str], ...]], float]

SIM_INFO: dict[str, Any] = {
    "model_path": "tiny",
    "dualpath_sim": True,
    "dualpath_time_scale": 1.0,
    "dualpath_kv": {"read_paths": ["pe", "de", "split"], "snic_bytes_per_s": 1e6},
}


def _values(text: str) -> Values:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _get(values: Values, name: str, **labels: str) -> float:
    return values.get((name, tuple(sorted(labels.items()))), 0.0)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _decision(at: float, pe_share: float) -> Decision:
    return Decision(
        RequestId("r"), EngineId("p"), EngineId("d"), pe_share, 0.1, 0.01, "x", "", at, 0
    )


def test_a_finished_stream_records_its_latencies_and_the_workers_usage() -> None:
    metrics = GatewayMetrics()
    usage = {"prompt_tokens": 1000, "completion_tokens": 11, "prompt_tokens_details": {}}
    usage["prompt_tokens_details"] = {"cached_tokens": 960}
    metrics.finished("tiny", 10.0, Completed(usage, first_chunk_at=10.5, ended_at=11.5))
    metrics.finished("tiny", 20.0, Completed(None, first_chunk_at=None, ended_at=21.0))
    v = _values(metrics.render().decode())
    assert _get(v, "dualpath_ttft_seconds_count", model="tiny") == 1  # unstreamed: no TTFT
    assert _get(v, "dualpath_ttft_seconds_sum", model="tiny") == 0.5
    assert _get(v, "dualpath_tpot_seconds_sum", model="tiny") == 0.1  # 1 s over 10 tokens
    assert _get(v, "dualpath_e2e_seconds_count", model="tiny") == 2
    assert _get(v, "dualpath_ttft_seconds_bucket", model="tiny", le="0.5") == 1
    assert _get(v, "dualpath_prompt_tokens_total", model="tiny") == 1000
    assert _get(v, "dualpath_kv_hit_tokens_total", model="tiny") == 960
    assert _get(v, "dualpath_completion_tokens_total", model="tiny") == 11
    assert [t for _, t in metrics.recent_ttft] == [0.5]


def test_placement_splits_queue_wait_from_the_gateways_own_schedule_time() -> None:
    clock = Clock()
    metrics = GatewayMetrics(clock)
    clock.now = 13.0  # asked at 10, held until a decision at 12.5, handed back at 13
    metrics.placed("tiny", _decision(12.5, 0.25), since=10.0)
    start = metrics.stage("parse", since=12.0)
    assert start == 13.0
    v = _values(metrics.render().decode())
    assert _get(v, "dualpath_queue_wait_seconds_sum", model="tiny") == 2.5
    assert _get(v, "dualpath_stage_seconds_sum", stage="schedule") == 0.5
    assert _get(v, "dualpath_stage_seconds_sum", stage="parse") == 1.0
    assert _get(v, "dualpath_read_path_decisions_total", model="tiny", read_path="split") == 1


def test_active_sessions_expire_after_the_window_and_stay_bounded() -> None:
    active = ActiveSessions(window_s=60.0, limit=3)
    for i in range(5):
        active.touch(("t", f"s{i}"), float(i))
    assert active.count(10.0) == 3  # the two oldest were dropped for the bound
    active.touch(("t", "s2"), 50.0)
    assert active.count(65.0) == 1  # only s2 turned within the last minute


def test_link_rates_use_at_least_a_window_of_reports() -> None:
    rates = LinkRates(window_s=2.0, samples=8)

    def report(at: float, moved: float) -> WorkerLoad:
        return WorkerLoad(at, 0, 0, 0, 1, 0.0, 0.0, snic_moved_bytes=moved, cnic_moved_bytes=0)

    rates.observe("n", report(0.0, 0.0))
    assert rates.rates("n") is None
    for i in range(1, 9):
        rates.observe("n", report(i * 0.5, i * 500.0))
    rates.observe("n", report(4.0, 1e9))  # not newer: ignored
    assert rates.rates("n") == (1000.0, 0.0)
    rates.forget_except([])
    assert rates.rates("n") is None


def _cluster() -> tuple[list[Worker], WorkerRegistry, LiveScheduler]:
    workers = [
        Worker("http://p0", "prefill", 1, "tiny", True, info=dict(SIM_INFO)),
        Worker("http://d0", "decode", None, "tiny", True, info=dict(SIM_INFO)),
        Worker("http://s0", "decode", None, "tiny", False, info={"model_path": "x"}),
    ]
    registry = WorkerRegistry(workers, client=None)  # type: ignore[arg-type]  # never polled
    live = LiveScheduler(registry, SchedulerConfig(), SchedulingConfig(), 3)
    live.sync()
    return workers, registry, live


def test_live_state_is_read_at_scrape_time_per_engine_and_node() -> None:
    workers, registry, live = _cluster()
    metrics = GatewayMetrics()
    metrics.attach(LiveState(registry, live.schedulers, live.policy, MemorySessionStore()))
    at = time.monotonic()
    workers[0].load = WorkerLoad(at - 2.5, 2, 1, 300, 1000, 5e5, 0.0, 0.0, 0.0)
    workers[2].load = WorkerLoad(at, 1, 0, 10, 100)  # a stock worker: no links
    metrics.render()
    workers[0].load = WorkerLoad(at, 3, 4, 500, 1000, 2e5, 0.0, 1.25e6, 0.0)
    v = _values(metrics.render().decode())
    p0 = {"engine": "http://p0", "role": "prefill", "model": "tiny"}
    assert _get(v, "dualpath_engine_running_requests", **p0) == 3
    assert _get(v, "dualpath_engine_queued_requests", **p0) == 4
    assert _get(v, "dualpath_engine_tokens", **p0) == 500
    assert _get(v, "dualpath_engine_healthy", engine="http://s0", role="decode", model="x") == 0
    node = {"node": "http://p0", "role": "prefill"}
    assert _get(v, "dualpath_snic_utilization", **node) == 0.5  # 1.25 MB in 2.5 s of 1 MB/s
    assert _get(v, "dualpath_snic_queue_seconds", **node) == 0.2
    assert _get(v, "dualpath_snic_read_bytes_total", **node) == 1.25e6
    assert not any(n == "dualpath_snic_utilization" and ("node", "http://s0") in k for n, k in v)
    assert _get(v, "dualpath_queue_depth", model="tiny") == 0
    assert ("dualpath_sheds_total", (("model", "tiny"),)) in v
    assert _get(v, "dualpath_sessions_stored") == 0


def test_requests_are_counted_by_route_template_and_every_name_is_ours() -> None:
    with TestClient(create_app(load_settings(env={}))) as client:
        client.get("/v1/sessions/one")
        client.get("/v1/sessions/two")
        client.get("/no/such/route")
        client.post("/v1/chat/completions", content=b"{", headers={"content-type": "x/y"})
        text = client.get("/metrics").text
        data = client.get("/dashboard/data").json()
    v = _values(text)
    assert _get(v, "dualpath_requests_total", route="/v1/sessions/{session_id}", status="404") == 2
    assert _get(v, "dualpath_requests_total", route="unmatched", status="404") == 1
    assert _get(v, "dualpath_requests_total", route="/v1/chat/completions", status="415") == 1
    assert all(name.startswith("dualpath_") for name, _ in v)
    labels = {k for _, key in v for k, _ in key}
    assert labels <= {
        "route",
        "status",
        "model",
        "stage",
        "le",
        "read_path",
        "engine",
        "role",
        "node",
    }
    assert data["requests"] == {"total": 1, "errors": 1}


def test_dashboard_data_keeps_a_bounded_series_of_points() -> None:
    clock = Clock()
    metrics = GatewayMetrics(clock)
    board = Dashboard(metrics, interval_s=1.0, clock=clock, wall=clock)
    for i in range(1300):
        clock.now = 1000.0 + i * 0.5  # polled twice a second: one point a second
        body = board.data()
    assert len(body["series"]) == 600  # of 650 points, the last ten minutes
    assert body["series"][-1]["t"] - body["series"][0]["t"] < 601
    clock.now += 1.0
    metrics.recent_ttft.append((clock.now - 1.0, 0.2))
    metrics.recent_ttft.append((clock.now - 20.0, 9.0))  # outside the window
    assert board.data()["latency"]["ttft"] == {"p50": 0.2, "p90": 0.2, "n": 1}
