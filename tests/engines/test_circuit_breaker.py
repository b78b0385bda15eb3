"""The per-worker circuit breaker, and the registry's leases that feed it (no network: the
registry is filled by hand, as discovery would)."""

from __future__ import annotations

import pytest

from engines.circuit_breaker import BreakerPolicy, BreakerState, CircuitBreaker
from engines.worker_registry import Worker, WorkerRegistry

POLICY = BreakerPolicy(failure_threshold=3, cool_down_s=5.0)


def _opened(at: float = 0.0) -> CircuitBreaker:
    breaker = CircuitBreaker(POLICY)
    for _ in range(POLICY.failure_threshold):
        breaker.failed(at)
    return breaker


def test_consecutive_failures_open_it_and_a_success_in_between_resets_the_count() -> None:
    breaker = CircuitBreaker(POLICY)
    assert not breaker.failed(0.0) and not breaker.failed(0.1)
    assert not breaker.succeeded()  # it was closed: nothing to close
    assert not breaker.failed(0.2) and not breaker.failed(0.3)
    assert breaker.state(0.3) is BreakerState.CLOSED and breaker.available(0.3)
    assert breaker.failed(0.4)  # the third in a row
    assert breaker.state(0.4) is BreakerState.OPEN and not breaker.available(0.4)
    assert breaker.opened == 1 and breaker.retry_in_s(1.4) == pytest.approx(4.0)


def test_after_the_cool_down_one_probe_goes_and_its_success_closes_it() -> None:
    breaker = _opened(at=10.0)
    assert not breaker.available(14.9)
    assert breaker.state(15.0) is BreakerState.HALF_OPEN and breaker.available(15.0)
    breaker.dispatched(15.0)  # the probe
    assert not breaker.available(15.1)  # nothing else while it is out
    assert breaker.succeeded()
    assert breaker.state(15.2) is BreakerState.CLOSED and breaker.failures == 0


def test_a_failed_probe_opens_it_again_for_a_new_cool_down() -> None:
    breaker = _opened(at=0.0)
    breaker.dispatched(5.0)
    assert breaker.failed(5.5)  # one failure is enough when half-open
    assert (
        breaker.state(10.0) is BreakerState.OPEN and breaker.state(10.5) is BreakerState.HALF_OPEN
    )
    assert breaker.opened == 2


def test_a_probe_that_ends_without_a_verdict_frees_the_slot() -> None:
    breaker = _opened()
    breaker.dispatched(6.0)
    assert not breaker.available(6.0)
    breaker.released()
    assert breaker.available(6.0) and breaker.state(6.0) is BreakerState.HALF_OPEN


def test_failures_while_open_do_not_extend_the_cool_down() -> None:
    breaker = _opened(at=0.0)
    assert not breaker.failed(4.0)  # in-flight requests failing late
    assert breaker.state(5.0) is BreakerState.HALF_OPEN


def test_a_zero_threshold_never_opens() -> None:
    breaker = CircuitBreaker(BreakerPolicy(failure_threshold=0))
    assert not any(breaker.failed(float(t)) for t in range(100))
    assert breaker.available(100.0)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _registry(clock: Clock) -> tuple[WorkerRegistry, Worker, list[int]]:
    worker = Worker("http://d0", "decode", None, "m", True)
    registry = WorkerRegistry([worker], client=None, breaker=POLICY, clock=clock)  # type: ignore[arg-type]
    changes: list[int] = []
    registry.subscribe(lambda: changes.append(1))
    return registry, worker, changes


def test_leases_count_in_flight_and_feed_the_breaker() -> None:
    clock = Clock()
    registry, worker, changes = _registry(clock)
    leases = [registry.lease(worker) for _ in range(3)]
    assert worker.in_flight == 3
    for lease in leases:
        lease.failed()
        lease.failed()  # one verdict of each kind per lease
        lease.release()
        lease.release()  # idempotent
    assert worker.in_flight == 0 and worker.breaker.failures == 3
    assert not registry.usable(worker) and registry.available("decode", "m") == []
    assert changes  # the scheduler was told
    clock.now += POLICY.cool_down_s
    assert registry.usable(worker)
    probe = registry.lease(worker)
    assert probe.probe and not registry.usable(worker)
    other = registry.lease(worker)  # placed in the same pass: not the probe
    assert not other.probe
    other.release()
    assert not registry.usable(worker)  # the probe still holds the slot
    probe.succeeded()
    probe.release()
    assert registry.usable(worker) and worker.breaker.state(clock.now) is BreakerState.CLOSED


def test_a_stream_that_began_well_and_broke_counts_as_a_failure() -> None:
    registry, worker, _ = _registry(Clock())
    lease = registry.lease(worker)
    lease.succeeded()
    lease.failed()
    lease.release()
    assert worker.breaker.failures == 1


def test_draining_removes_the_worker_when_its_last_request_ends() -> None:
    registry, worker, changes = _registry(Clock())
    lease = registry.lease(worker)
    assert not registry.drain(worker)  # one in flight: it stays, draining
    assert registry.find(worker.id) is worker and not registry.usable(worker)
    lease.release()
    assert registry.find(worker.url) is None and registry.all == []
    assert len(changes) >= 2


def test_forced_drain_removes_at_once_and_find_takes_an_id_or_a_url() -> None:
    registry, worker, _ = _registry(Clock())
    assert registry.find(worker.url + "/") is worker and registry.find(worker.id) is worker
    registry.lease(worker)
    assert registry.drain(worker, force=True)
    assert registry.find(worker.id) is None
    with pytest.raises(ValueError, match="already registered"):
        registry.add(Worker("http://x", "decode"))
        registry.add(Worker("http://x", "prefill"))
