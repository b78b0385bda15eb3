"""Worker load reports: parsed from `/v1/loads`, polled from real workers."""

from __future__ import annotations

import sys

import pytest

from engines.pd_client import UpstreamClient, UpstreamTimeouts
from engines.worker_loads import LoadPoller, WorkerLoad, parse_loads
from engines.worker_registry import Worker
from tests.support.procs import free_port, running


def _rank(running: int, read_q: float | None) -> dict[str, object]:
    rank: dict[str, object] = {"num_running_reqs": running, "num_waiting_reqs": 1,
                               "num_used_tokens": 100, "max_total_num_tokens": 1000}  # fmt: skip
    if read_q is not None:
        rank["dualpath"] = {"read_q_bytes": read_q, "cnic_q_bytes": 2.0}
    return rank


def test_ranks_are_summed_and_link_queues_read_when_reported() -> None:
    load = parse_loads({"loads": [_rank(2, 10.0), _rank(3, 5.0)]}, at=7.0)
    assert load == WorkerLoad(7.0, 5, 2, 200, 2000, read_q_bytes=15.0, cnic_q_bytes=4.0)


def test_a_stock_worker_has_no_link_queues() -> None:
    load = parse_loads({"loads": [_rank(2, None)]}, at=0.0)
    assert load is not None and load.read_q_bytes is None and load.cnic_q_bytes is None


@pytest.mark.parametrize("body", [None, [], {"loads": []}, {"loads": [1]}, {"loads": "x"}])
def test_anything_else_is_no_report(body: object) -> None:
    assert parse_loads(body, at=0.0) is None


async def test_the_poller_reads_healthy_workers_only() -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "engines.sim_worker", "--role", "null", "--port", str(port),
           "--kv-store", "memory"]  # fmt: skip
    with running(cmd, url + "/health"):
        client = UpstreamClient(UpstreamTimeouts())
        try:
            up = Worker(url, "prefill", healthy=True)
            sick = Worker(url, "decode", healthy=False)
            await LoadPoller(lambda: [up, sick], client).poll_once()
            assert up.load is not None and up.load.read_q_bytes == 0.0
            assert up.load.max_tokens > 0
            assert sick.load is None
        finally:
            await client.aclose()
