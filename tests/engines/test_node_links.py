"""The pure link model: FIFO transfers at a link's bandwidth, and the queue ahead of a read."""

from __future__ import annotations

import pytest

from engines.engine_model import HOPPER_NODE
from engines.node_links import LinkQueue, NodeLinks, Transfer


def test_transfers_run_one_at_a_time_in_order_at_full_bandwidth() -> None:
    link = LinkQueue("snic", bytes_per_s=100.0)
    for tid, size in (("a", 50.0), ("b", 200.0), ("c", 25.0)):
        assert link.add(Transfer(tid, size))
    assert link.queued_bytes == 275.0
    done: list[tuple[str, float]] = []
    while (step := link.next_step()) is not None:
        assert link.next_step() is None  # the running transfer holds the link
        done.append((step.transfer.tid, step.duration_s))
        link.finish_step(step)
    assert done == [("a", 0.5), ("b", 2.0), ("c", 0.25)]
    assert link.queued_bytes == 0.0
    assert link.moved_bytes == 275.0


def test_queue_ahead_counts_the_running_transfer_until_it_finishes() -> None:
    link = LinkQueue("snic", bytes_per_s=10.0)
    link.add(Transfer("a", 30.0))
    link.add(Transfer("b", 5.0))
    step = link.next_step()
    assert step is not None
    assert link.queued_bytes == 35.0 and link.num_queued == 2
    link.finish_step(step)
    assert link.queued_bytes == 5.0 and link.num_queued == 1


def test_abort_and_a_full_queue() -> None:
    link = LinkQueue("cnic", bytes_per_s=1.0, max_waiting=2)
    assert link.add(Transfer("a", 1.0)) and link.add(Transfer("b", 2.0))
    assert not link.add(Transfer("c", 3.0))
    assert link.abort("a") and not link.abort("a")
    assert link.queued_bytes == 2.0
    with pytest.raises(ValueError):
        LinkQueue("bad", bytes_per_s=0.0)


def test_a_node_has_the_cost_models_bandwidths() -> None:
    links = NodeLinks.of(HOPPER_NODE)
    assert links.snic.bytes_per_s == HOPPER_NODE.snic_bytes_per_s == 50e9
    assert links.cnic.bytes_per_s == 8 * links.snic.bytes_per_s
    links.snic.add(Transfer("r", 1e9))
    assert links.read_q_bytes == 1e9
