"""The dashboard's per-node NIC history and storage-NIC balance, pure: rows and live snapshots are
built by hand, the clock is a number (no sockets, no workers)."""

from __future__ import annotations

from typing import Any, cast

import pytest

from gateway.dashboard_data import SERIES_POINTS, Dashboard, NodeHistory, snic_max_over_avg
from gateway.live_state import RATE_WINDOW_S, LiveSnapshot, LiveState, NodeView
from gateway.metrics import GatewayMetrics


def _row(node: str, snic: float | None = 0.5, cnic: float | None = 0.1) -> dict[str, Any]:
    return {"node": node, "role": "prefill", "snic_utilization": snic, "cnic_utilization": cnic}


def _by_node(history: NodeHistory, length: int) -> dict[str, dict[str, Any]]:
    return {s["node"]: s for s in history.series(length)}


@pytest.mark.parametrize(
    ("used", "expected"),
    [
        ([], None),
        ([0.0, 0.0], None),  # nothing read: no balance to speak of
        ([0.3], 1.0),
        ([0.75, 0.25, 0.5], 1.5),
        ([0.5, 0.5, None], 1.0),  # a node without a rate yet does not count
    ],
)
def test_snic_max_over_avg(used: list[float | None], expected: float | None) -> None:
    assert snic_max_over_avg(_row(f"n{i}", snic=u) for i, u in enumerate(used)) == expected


def test_each_ring_is_as_long_as_the_series_and_keeps_the_newest_points() -> None:
    history = NodeHistory(points=5)
    for i in range(12):
        history.add([_row("a", snic=i / 100, cnic=i / 1000)])
    a = _by_node(history, 5)["a"]
    assert a["snic"] == [0.07, 0.08, 0.09, 0.10, 0.11]
    assert a["cnic"] == [0.007, 0.008, 0.009, 0.010, 0.011]
    assert a["role"] == "prefill"


def test_a_later_node_is_padded_to_line_up_with_the_series() -> None:
    history = NodeHistory(points=5)
    history.add([_row("a", snic=0.1)])
    history.add([_row("a", snic=0.2), _row("b", snic=0.9)])
    series = _by_node(history, 2)
    assert series["a"]["snic"] == [0.1, 0.2]
    assert series["b"]["snic"] == [None, 0.9]
    assert series["b"]["cnic"] == [None, 0.1]


def test_a_node_that_left_falls_out_after_a_ring_of_points() -> None:
    history = NodeHistory(points=4)
    history.add([_row("a"), _row("gone", snic=0.7)])
    for _ in range(3):
        history.add([_row("a")])
    # Three points absent: its one real value is still in the window, the rest None.
    assert _by_node(history, 4)["gone"]["snic"] == [0.7, None, None, None]
    history.add([_row("a")])
    assert set(_by_node(history, 4)) == {"a"}


def test_the_number_of_nodes_is_bounded_and_present_ones_are_kept() -> None:
    history = NodeHistory(points=10, limit=2)
    history.add([_row("a"), _row("b"), _row("c")])
    assert set(_by_node(history, 1)) == {"a", "b"}  # full: c goes untracked, not a or b
    history.add([_row("c"), _row("b")])  # a is absent, so c takes its place
    assert set(_by_node(history, 2)) == {"b", "c"}
    assert _by_node(history, 2)["c"]["snic"] == [None, 0.5]
    history.add([_row("a"), _row("c")])  # b absent now: the longest absent makes room
    assert set(_by_node(history, 3)) == {"a", "c"}


def test_many_nodes_coming_and_going_stay_within_the_bounds() -> None:
    history = NodeHistory(points=8, limit=3)
    for i in range(200):
        history.add([_row(f"n{i}"), _row(f"n{i + 1}"), _row("stays")])
        series = history.series(min(i + 1, 8))
        assert len(series) <= 3
        assert all(len(s["snic"]) == len(s["cnic"]) <= 8 for s in series)
    assert "stays" in _by_node(history, 8)


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class _Live:
    """What `Dashboard` reads of live state: the policy and a snapshot with these nodes."""

    policy = "dualpath-slo"

    def __init__(self) -> None:
        self.snic: dict[str, float] = {}

    def snapshot(self) -> LiveSnapshot:
        nodes = tuple(
            NodeView(url, "decode", u, 0.01, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
            for url, u in self.snic.items()
        )
        return LiveSnapshot(self.policy, (), nodes, (), None)


def test_the_dashboard_samples_node_history_with_its_series() -> None:
    clock = _Clock()
    metrics = GatewayMetrics(clock)
    live = _Live()
    metrics.attach(cast(LiveState, live))
    board = Dashboard(metrics, interval_s=1.0, clock=clock, wall=clock)

    def poll(times: int) -> dict[str, Any]:
        for _ in range(times):
            clock.now += 0.5  # polled twice a second: one point a second
            body = board.data()
        return body

    live.snic = {"http://pe": 0.6, "http://de": 0.2}
    body = poll(100)
    assert body["balance"] == {"snic_max_avg": pytest.approx(1.5), "window_s": RATE_WINDOW_S}
    live.snic = {"http://pe": 0.6}  # the decode node leaves
    body = poll(100)
    nodes = {s["node"]: s for s in body["node_series"]}
    assert len(body["series"]) == 100
    assert [len(s["snic"]) for s in nodes.values()] == [100, 100]
    assert nodes["http://pe"]["snic"][-1] == 0.6
    assert nodes["http://de"]["snic"][-1] is None  # gone, still in the window
    assert body["series"][0]["snic_max_avg"] == pytest.approx(1.5)  # 0.6 / mean(0.6, 0.2)
    assert body["series"][-1]["snic_max_avg"] == 1.0
    body = poll(1200)
    assert len(body["series"]) == SERIES_POINTS
    assert [s["node"] for s in body["node_series"]] == ["http://pe"]
    assert len(body["node_series"][0]["snic"]) == SERIES_POINTS
