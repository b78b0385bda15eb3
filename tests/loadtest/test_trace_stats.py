"""Trace statistics on traces small enough to check by hand."""

from __future__ import annotations

import pytest

from loadtest.trace import AgentId, AgentTrace, Trace, Turn
from loadtest.trace_stats import Summary, trace_stats


def test_a_small_trace_by_hand() -> None:
    trace = Trace(
        (
            # prompts: 1000; 1100 + 100 = 1200; 1220 + 20 = 1240
            AgentTrace(AgentId("a"), (Turn(1000, 100), Turn(100, 20, 2.0), Turn(20, 30, 4.0))),
            # prompts: 500; 510 + 10 = 520
            AgentTrace(AgentId("b"), (Turn(500, 10, at_s=1.0), Turn(10, 10, 0.0, at_s=4.5))),
        )
    )
    stats = trace_stats(trace)
    assert (stats.agents, stats.turns) == (2, 5)
    assert stats.turns_per_agent == Summary(2.5, 2, 3, 3)
    assert stats.append == Summary(1630 / 5, 100, 1000, 1000)
    assert stats.output.max == 100
    assert stats.context == Summary(4460 / 5, 1000, 1240, 1240)
    assert stats.append_agent_mean == pytest.approx((1120 / 3 + 510 / 2) / 2)
    assert stats.output_agent_mean == pytest.approx((150 / 3 + 20 / 2) / 2)
    assert stats.total_mean == (1270 + 530) / 2
    assert stats.prompt_tokens == 4460
    assert (stats.appended_tokens, stats.output_tokens, stats.total_tokens) == (1630, 170, 1800)
    assert stats.hit_ratio == pytest.approx(1 - 1630 / 4460)
    assert stats.tool_s_mean == pytest.approx((2.0 + 4.0 + 0.0) / 3)
    assert stats.span_s == 3.5


def test_an_empty_trace_has_zero_stats() -> None:
    stats = trace_stats(Trace(()))
    assert (stats.agents, stats.turns, stats.hit_ratio, stats.span_s) == (0, 0, 0.0, None)
    assert stats.context == Summary(0.0, 0.0, 0.0, 0.0)


def test_percentiles_are_nearest_rank() -> None:
    values = list(range(1, 201))
    assert Summary.of(values) == Summary(100.5, 100, 198, 200)
    assert Summary.of([7]) == Summary(7, 7, 7, 7)
