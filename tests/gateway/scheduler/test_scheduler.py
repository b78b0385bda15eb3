"""The scheduler cycle: hold queue order, shedding, bookkeeping, reconciliation, feedback."""

from __future__ import annotations

import heapq
from dataclasses import replace

import pytest

from gateway.scheduler.cluster_state import ClusterState, LoadReport
from gateway.scheduler.config import SchedulerConfig
from gateway.scheduler.decision import Shed
from gateway.scheduler.scheduler import Scheduler
from tests.gateway.scheduler.builders import cluster, request


def _scheduler(prefill: int = 1, decode: int = 1, **config: object) -> Scheduler:
    return Scheduler(cluster(prefill, decode, config=SchedulerConfig(**config)))  # type: ignore[arg-type]


def _idle(state: ClusterState) -> bool:
    return all(e.seq == 0 and e.tok == 0 for e in state.engines.values())


def test_dispatch_books_work_and_the_request_end_gives_it_back() -> None:
    s = _scheduler(policy="dualpath-slo")
    req = request(hit=1000, append=100, output=50)
    assert s.submit(req, 0.0) is None
    (d,) = s.schedule(0.0)
    pe, de = s.cluster.engines[d.prefill], s.cluster.engines[d.decode]
    assert (pe.seq, pe.tok, de.seq, de.tok) == (1, 1100, 1, 1150)
    assert pe.queue_s(0.0) == pytest.approx(0.1)
    # The split put half the hit on each node's storage NIC (1 MB/s): 0.5 s each.
    assert pe.node.read_q_s(0.0) == pytest.approx(0.5)
    assert de.node.read_q_s(0.0) == pytest.approx(0.5)
    s.first_token(req.rid, 0.7)
    assert (pe.seq, pe.tok, pe.pending_compute_s) == (0, 0, 0.0)
    assert pe.queue_s(0.7) == 0.0
    s.finished(req.rid, 1.0, output_tokens=20)
    assert _idle(s.cluster) and s.cluster.inflight == 0


def test_edf_serves_earliest_deadline_and_priority_first() -> None:
    s = _scheduler(policy="dualpath-slo", max_wait_s=1e9)
    s.cluster.engines["p0"].compute_free_at = 100.0  # everything is held
    late = request(hit=0, at=0.0, ttft=10.0, rid="late")  # due at 10
    soon = request(hit=0, at=1.0, ttft=2.0, rid="soon")  # due at 3
    vip = request(hit=0, at=2.0, ttft=4.0, priority=2, rid="vip")  # due at 6, minus 2 classes × 2 s
    for r in (late, soon, vip):
        assert s.submit(r, r.arrival) is None
    assert s.schedule(3.0) == [] and s.held == 3
    assert s.wake_at() == pytest.approx(99.5)
    order = [d.rid for d in s.schedule(99.6)]
    s.cluster.engines["p0"].compute_free_at = 0.0
    order += [d.rid for d in s.schedule(99.7)]
    assert order == ["vip", "soon", "late"]


def test_fifo_policies_keep_arrival_order_behind_a_held_head() -> None:
    s = _scheduler(policy="dualpath")
    s.cluster.engines["p0"].compute_free_at = 6.0  # over β: the head waits, and so does the rest
    for i in range(3):
        s.submit(request(rid=f"f{i}", ttft=1.0 + 10 * (2 - i)), 0.0)
    assert s.schedule(0.0) == []
    assert [d.rid for d in s.schedule(1.5)] == ["f0", "f1", "f2"]


def test_sheds_when_the_predicted_wait_is_over_the_bound() -> None:
    s = _scheduler(policy="dualpath-slo", max_wait_s=5.0)
    s.cluster.engines["p0"].compute_free_at = 8.0
    shed = s.submit(request(), 0.0)
    assert isinstance(shed, Shed) and shed.retry_after_s == 8.0  # ceil(8 - 0.5 admit backlog)
    assert s.held == 0 and s.counters.shed == 1
    assert s.submit(request(), 4.0) is None  # 3.5 s now: held instead


def test_sheds_past_the_hold_bound_for_every_policy() -> None:
    s = _scheduler(policy="round_robin", max_held=2)
    s.cluster.set_healthy("p0", False)
    assert s.submit(request(), 0.0) is None and s.submit(request(), 0.0) is None
    assert isinstance(s.submit(request(), 0.0), Shed)


def test_a_cancelled_held_request_is_never_dispatched() -> None:
    s = _scheduler(policy="dualpath-slo")
    s.cluster.engines["p0"].compute_free_at = 10.0
    gone, kept = request(hit=0, rid="gone"), request(hit=0, rid="kept")
    assert s.submit(gone, 0.0) is None and s.submit(kept, 0.0) is None
    assert s.cancel("gone") and not s.cancel("gone")
    s.cluster.engines["p0"].compute_free_at = 0.0
    assert [d.rid for d in s.schedule(1.0)] == ["kept"]


def test_reconcile_takes_the_workers_read_queue_and_memory() -> None:
    state = cluster(1, 1)
    p0, d0 = state.engines["p0"], state.engines["d0"]
    p0.node.queue_read(0.0, 1e6)  # our own 1 s read, not yet seen by the worker
    report = LoadReport(at=0.5, running=1, waiting=0, used_tokens=900, max_tokens=10_000)
    state.reconcile("p0", replace(report, read_q_bytes=2e6))
    assert p0.node.read_q_s(0.5) == pytest.approx(3.0)  # 2 s reported + 1 s since
    state.reconcile("p0", replace(report, read_q_bytes=0.0))
    assert p0.node.read_q_s(0.5) == 0.0
    state.reconcile("d0", report)
    assert d0.kv_free_tokens == 9_100
    state.reconcile("unknown", report)  # a worker the scheduler does not know: ignored


def test_feedback_moves_predictions_toward_what_is_observed_within_bounds() -> None:
    s = _scheduler(policy="basic", feedback_weight=0.5, feedback_max=3.0)
    p0 = s.cluster.engines["p0"]
    for i in range(10):
        req = request(hit=0, append=100, output=11, rid=f"r{i}")
        s.submit(req, 10.0 * i)
        (d,) = s.schedule(10.0 * i)
        raw = d.predicted_ttft_s / p0.ttft_factor
        s.first_token(req.rid, 10.0 * i + 10 * raw)  # ten times slower than predicted
        s.finished(req.rid, 10.0 * i + 10 * raw + 10 * d.predicted_tpot_s)
    assert p0.ttft_factor == pytest.approx(3.0, abs=0.01) and p0.ttft_factor <= 3.0
    assert s.cluster.engines["d0"].tpot_factor == 1.0  # no token count: no TPOT observation
    req = request(hit=0, output=11, rid="timed")
    s.submit(req, 200.0)
    (d,) = s.schedule(200.0)
    s.first_token(req.rid, 201.0)
    s.finished(req.rid, 201.0 + 10 * 2 * d.predicted_tpot_s, output_tokens=11)  # twice as slow
    assert s.cluster.engines["d0"].tpot_factor == pytest.approx(1.5)


def test_lost_completions_cannot_grow_the_books_past_their_bound() -> None:
    s = _scheduler(2, 2, policy="round_robin", max_inflight=3)
    for i in range(7):
        s.submit(request(rid=f"r{i}"), 0.0)
    assert len(s.schedule(0.0)) == 7
    state = s.cluster
    assert state.inflight == 3
    assert sum(e.seq for e in state.engines.values()) == 6  # 3 requests × (prefill + decode)
    for i in range(4, 7):
        s.finished(f"r{i}", 1.0)
    assert _idle(state)


def test_the_decision_log_is_bounded() -> None:
    s = _scheduler(policy="round_robin", decision_log=4)
    for i in range(10):
        s.submit(request(rid=f"r{i}"), 0.0)
    s.schedule(0.0)
    assert [d.rid for d in s.decisions] == ["r6", "r7", "r8", "r9"]


def _run_overload(s: Scheduler, arrivals: list[tuple[float, int]]) -> dict[str, float]:
    """A tiny virtual-time driver: engines answer exactly as predicted."""
    events: list[tuple[float, int, str, str]] = []
    for i, (t, prio) in enumerate(arrivals):
        events.append((t, i, "arrive", f"{prio}:{i}"))
    heapq.heapify(events)
    dispatched: dict[str, float] = {}
    n = len(events)
    while events:
        now, _, kind, rid = heapq.heappop(events)
        if kind == "arrive":
            prio, i = rid.split(":")
            req = request(hit=0, append=100, output=2, at=now, priority=int(prio), rid=rid)
            assert s.submit(req, now) is None
        elif kind == "first":
            s.first_token(rid, now)
        elif kind == "end":
            s.finished(rid, now, 2)
        for d in s.schedule(now):
            dispatched[d.rid] = now
            first = now + d.predicted_ttft_s
            heapq.heappush(events, (first, n, "first", d.rid))
            heapq.heappush(events, (first + d.predicted_tpot_s, n + 1, "end", d.rid))
            n += 2
        wake = s.wake_at()
        if wake is not None and not any(e[2] == "wake" for e in events):
            heapq.heappush(events, (max(wake, now + 1e-6), n, "wake", ""))
            n += 1
    return dispatched


def test_no_request_starves_under_sustained_overload() -> None:
    s = _scheduler(2, 1, policy="dualpath-slo", max_wait_s=1e9, priority_step_s=2.0)
    # Two prefill engines serve 20 requests/s (0.1 s each); 30/s arrive for 20 s, two thirds of
    # them a class above the rest.
    arrivals = [(i / 30, 1 if i % 3 else 0) for i in range(600)]
    dispatched = _run_overload(s, arrivals)
    assert len(dispatched) == 600 and s.held == 0
    assert _idle(s.cluster)
    # A low-class request goes before anything that arrived more than one class step later.
    for i, (t, prio) in enumerate(arrivals):
        if prio:
            continue
        mine = dispatched[f"0:{i}"]
        later = [dispatched[f"{p}:{j}"] for j, (u, p) in enumerate(arrivals) if u > t + 2.0 + 1e-9]
        assert all(mine <= other for other in later)
    waits = [dispatched[f"{p}:{i}"] - t for i, (t, p) in enumerate(arrivals)]
    assert max(waits) < 20.0
