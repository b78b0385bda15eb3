"""The generator: Table 2's shapes, within bounds, the same bytes for the same seed."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loadtest.generator import ToolLatency, generate
from loadtest.presets import PRESETS
from loadtest.trace import Trace
from loadtest.trace_io import write_trace
from loadtest.trace_stats import TraceStats, trace_stats

AGENTS = 1500
"""Enough that sampling noise (about 2.5% on the append mean, the noisiest) stays far below 10%."""


@pytest.fixture(scope="module", params=sorted(PRESETS))
def generated(request: pytest.FixtureRequest) -> tuple[str, Trace, TraceStats]:
    trace = generate(request.param, AGENTS, seed=2026)
    return request.param, trace, trace_stats(trace)


def test_the_means_are_within_10_percent_of_table_2(
    generated: tuple[str, Trace, TraceStats],
) -> None:
    name, _trace, stats = generated
    paper = PRESETS[name].paper
    measured = {
        "turns": stats.turns_per_agent.mean,
        "append": stats.append_agent_mean,
        "output": stats.output_agent_mean,
        "context": stats.context.mean,
        "total": stats.total_mean,
    }
    for column, value in measured.items():
        expected = getattr(paper, column)
        assert value == pytest.approx(expected, rel=0.10), (name, column, value, expected)


def test_no_request_is_past_the_max_length(generated: tuple[str, Trace, TraceStats]) -> None:
    name, trace, stats = generated
    max_len = PRESETS[name].paper.max_len
    for agent in trace.agents:
        for prompt, turn in zip(agent.prompts(), agent.turns, strict=True):
            assert prompt + turn.output <= max_len
    # Trajectories do reach the limit: the spread is real, not a narrow band.
    assert stats.context.max > 0.95 * max_len
    assert stats.turns_per_agent.p99 > 2 * stats.turns_per_agent.p50 > 2 * 10


def test_the_same_seed_writes_the_same_bytes(tmp_path: Path) -> None:
    paths = [tmp_path / f"{n}.jsonl" for n in range(3)]
    write_trace(paths[0], generate("48k", 40, seed=5))
    write_trace(paths[1], generate("48k", 40, seed=5))
    write_trace(paths[2], generate("48k", 40, seed=6))
    assert paths[0].read_bytes() == paths[1].read_bytes()
    assert paths[0].read_bytes() != paths[2].read_bytes()


def test_an_agent_does_not_depend_on_how_many_are_generated() -> None:
    assert generate("32k", 30, seed=9).agents[:10] == generate("32k", 10, seed=9).agents


def test_tool_latency_zero_gives_zeros_and_the_same_tokens() -> None:
    quiet = generate("64k", 20, seed=3, tool_latency=ToolLatency(mean_s=0))
    busy = generate("64k", 20, seed=3, tool_latency=ToolLatency(mean_s=2.0))
    assert all(turn.tool_s == 0 for agent in quiet.agents for turn in agent.turns)
    assert trace_stats(busy).tool_s_mean == pytest.approx(2.0, rel=0.15)
    for a, b in zip(quiet.agents, busy.agents, strict=True):
        assert [(t.append, t.output) for t in a.turns] == [(t.append, t.output) for t in b.turns]
        assert b.turns[0].tool_s == 0  # nothing runs before the first turn


def test_the_trace_says_how_it_was_made() -> None:
    trace = generate("64k", 3, seed=1)
    assert trace.meta["preset"] == "64k"
    assert trace.meta["seed"] == 1
    assert [agent.agent for agent in trace.agents] == ["a0", "a1", "a2"]
    assert all(agent.arrival_s is None for agent in trace.agents)


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown preset '16k'; known: 32k, 48k, 64k"):
        generate("16k", 1, seed=0)
    with pytest.raises(ValueError, match="agents must be"):
        generate("32k", 0, seed=0)
    with pytest.raises(ValueError, match="tool latency"):
        ToolLatency(mean_s=-1)


@settings(max_examples=25)
@given(
    preset=st.sampled_from(sorted(PRESETS)),
    agents=st.integers(1, 4),
    seed=st.integers(0, 2**64),
    tool_s=st.floats(0, 30),
)
def test_every_turn_appends_and_generates_at_least_one_token(
    preset: str, agents: int, seed: int, tool_s: float
) -> None:
    trace = generate(preset, agents, seed, ToolLatency(mean_s=tool_s))
    assert len(trace.agents) == agents
    for agent in trace.agents:
        assert agent.total_tokens <= PRESETS[preset].paper.max_len
        for turn in agent.turns:
            assert turn.append >= 1
            assert turn.output >= 1
            assert turn.tool_s >= 0
