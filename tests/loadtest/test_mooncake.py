"""Mooncake traces: requests become agents' turns, agents inferred from shared prefixes."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import orjson
import pytest

from loadtest.errors import TraceFormatError
from loadtest.mooncake import read_mooncake
from loadtest.prefix_sessions import PrefixSessions
from loadtest.trace import Turn

EXCERPT = Path(__file__).parent / "data" / "mooncake_conversation_head200.jsonl"


def _write(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(row) + b"\n" for row in rows))
    return path


def _request(ids: list[int], input_length: int, output: int = 100, ms: int = 0) -> dict[str, Any]:
    return {"timestamp": ms, "input_length": input_length, "output_length": output, "hash_ids": ids}


def test_a_request_extending_an_agents_prompt_continues_it(tmp_path: Path) -> None:
    rows = [
        _request([0, 1, 2], 1500, 100, ms=0),
        _request([0, 1, 3, 4], 1800, 50, ms=1000),  # holds block 1, A's last full block
        _request([0, 1, 3, 4, 5, 6], 2900, 70, ms=2500),  # holds block 4 (A's last prompt, full)
    ]
    trace, report = read_mooncake(_write(tmp_path / "t.jsonl", rows))
    assert [agent.agent for agent in trace.agents] == ["inferred-0"]
    (agent,) = trace.agents
    # Each prompt is the whole context so far (appends and outputs) plus the new tokens.
    assert agent.turns == (
        Turn(1500, 100, at_s=0.0),
        Turn(1800 - 1600, 50, at_s=1.0),
        Turn(2900 - 1850, 70, at_s=2.5),
    )
    assert list(agent.prompts()) == [1500, 1800, 2900]
    assert agent.arrival_s == 0.0
    assert (report.agents, report.continued, report.shortened) == (1, 2, 0)
    assert report.shared_tokens == 1600 + 1850
    assert report.hit_ratio == pytest.approx((1600 + 1850) / (1500 + 1800 + 2900))


def test_a_request_that_diverges_starts_a_new_agent(tmp_path: Path) -> None:
    rows = [
        _request([0, 1, 2, 3], 2000),
        _request([0, 1, 9, 10], 2000),  # shares blocks 0-1, not A's last full block 2
        _request([0, 11], 600),  # shares only the system prompt block
        _request([0, 12, 13], 1100),  # block 0 is C's last full block: still not a continuation
    ]
    trace, report = read_mooncake(_write(tmp_path / "t.jsonl", rows))
    assert [len(agent.turns) for agent in trace.agents] == [1, 1, 1, 1]
    assert (report.agents, report.inferred_agents, report.continued) == (4, 4, 0)
    assert report.hit_ratio == 0.0


def test_a_partial_last_block_resent_continues_and_an_empty_append_becomes_one(
    tmp_path: Path,
) -> None:
    rows = [_request([0, 1, 2], 1100, 40), _request([0, 1, 2], 1100, 40)]
    trace, report = read_mooncake(_write(tmp_path / "t.jsonl", rows))
    (agent,) = trace.agents
    # The resent prompt is shorter than the context (1,140): only its known blocks are shared.
    assert agent.turns[1].append == 1
    assert (report.continued, report.shortened, report.raised_to_one) == (1, 1, 1)
    assert report.shared_tokens == 1100


def test_the_newest_agent_owning_a_tail_wins_and_the_deepest_tail_is_taken(
    tmp_path: Path,
) -> None:
    rows = [
        _request([0, 1, 2], 1500),  # A: tails 1 (last full block) and 2 (partial)
        _request([0, 1, 2, 3, 4], 2560),  # extends A: tail 4
        _request([0, 1, 2], 1500),  # tails 1 and 2 are no longer A's: a new agent B
        _request([0, 1, 2, 3, 4, 5, 6], 3500),  # holds tails 2 (B) and 4 (A): A is deeper
    ]
    trace, _ = read_mooncake(_write(tmp_path / "t.jsonl", rows))
    assert [len(agent.turns) for agent in trace.agents] == [3, 1]


def test_named_sessions_group_turns_and_delay_is_tool_latency(tmp_path: Path) -> None:
    rows = [
        {"session_id": "s1", "input_length": 800, "output_length": 20, "hash_ids": [0, 1]},
        {"session_id": 2, "input_length": 300, "output_length": 10},
        {"session_id": "s1", "input_length": 900, "output_length": 5, "delay": 1500},
        {"session_id": "s1", "input_length": 50, "output_length": 5, "delay": 0},
    ]
    trace, report = read_mooncake(_write(tmp_path / "t.jsonl", rows))
    s1, s2 = trace.agents
    assert (s1.agent, s2.agent) == ("s1", "2")
    # 900 ≥ the context (820): it resends the history. 50 < 925 and shares no known block:
    # it is the turn's new text alone.
    assert s1.turns == (Turn(800, 20), Turn(80, 5, 1.5), Turn(50, 5, 0.0))
    assert (report.inferred_agents, report.continued, report.shortened) == (0, 2, 1)


def test_the_tail_map_is_bounded_and_a_forgotten_agent_starts_over(tmp_path: Path) -> None:
    rows = [
        _request([0, 10, 11], 1100),
        _request([0, 20, 21], 1100),
        _request([0, 30, 31], 1100),
        _request([0, 10, 11, 12], 1700),  # would extend the first agent, whose tails are gone
        _request([0, 30, 31, 32], 1700),  # the third agent's tails are still there
    ]
    path = _write(tmp_path / "t.jsonl", rows)
    trace, _ = read_mooncake(path, max_tails=4)
    assert [len(agent.turns) for agent in trace.agents] == [1, 1, 2, 1]
    trace, _ = read_mooncake(path)
    assert [len(agent.turns) for agent in trace.agents] == [2, 1, 2]


def test_prefix_sessions_never_hold_more_than_their_bound() -> None:
    sessions = PrefixSessions(max_tails=8)
    for agent in range(100):
        ids = [0, *range(agent * 10 + 1, agent * 10 + 6)]
        sessions.remember(agent, ids, 5 * 512 + 100, 512)
        assert len(sessions) <= 8
    assert sessions.match([0, 991, 992, 993, 994, 995, 7]) is not None
    assert sessions.match([0, 11, 12, 13, 14, 15, 7]) is None


def _oracle_continuations(rows: list[dict[str, Any]]) -> list[int | None]:
    """Brute force, no bound: which earlier request each one continues (None: a new agent)."""
    latest: dict[int, int] = {}  # agent (first request's index) -> its latest request's index
    owner: list[int] = []
    found: list[int | None] = []
    for index, row in enumerate(rows):
        ids, best = row["hash_ids"], None
        for agent, last in latest.items():
            previous = rows[last]
            full = previous["input_length"] // 512
            tails = {i for i in (full - 1, len(previous["hash_ids"]) - 1) if i >= 1}
            depth = max(
                (i for i in tails if i < len(ids) and ids[i] == previous["hash_ids"][i]), default=-1
            )
            if depth >= 0 and (best is None or depth > best[1]):
                best = (agent, depth)
        agent = best[0] if best else index
        found.append(latest[agent] if best else None)
        latest[agent] = index
        owner.append(agent)
    return found


def test_the_real_excerpt_matches_a_brute_force_reading() -> None:
    rows = [orjson.loads(line) for line in EXCERPT.read_bytes().splitlines()]
    assert len(rows) == 200
    assert all(len(r["hash_ids"]) == math.ceil(r["input_length"] / 512) for r in rows)
    trace, report = read_mooncake(EXCERPT)
    continuations = _oracle_continuations(rows)
    assert report.requests == 200
    assert report.continued == sum(c is not None for c in continuations) == 7
    assert report.agents == len(trace.agents) == 200 - 7
    assert trace.turns == 200
    for agent in trace.agents:
        assert agent.arrival_s == agent.turns[0].at_s
        assert [turn.at_s for turn in agent.turns] == sorted(turn.at_s for turn in agent.turns)
    assert 0 < report.hit_ratio < 0.05


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ('{"output_length": 1}', "missing 'input_length'"),
        ('{"input_length": 0, "output_length": 1}', "'input_length' must be an integer ≥ 1"),
        ('{"input_length": 600, "output_length": 1, "hash_ids": [0]}', "1 hash_ids for"),
        ('{"input_length": 6, "output_length": 1, "hash_ids": ["x"]}', "array of integers"),
        ('{"input_length": 6, "output_length": 1, "timestamp": -1}', "'timestamp' must be"),
        ('{"input_length": 6, "output_length": 1, "session_id": ""}', "'session_id' must be"),
        ('{"timestamp": 5, "input_length": 6, "output_length": 1}', "time order"),
    ],
)
def test_a_malformed_request_is_an_error_naming_its_line(
    tmp_path: Path, line: str, reason: str
) -> None:
    path = tmp_path / "bad.jsonl"
    first = '{"timestamp": 10, "input_length": 6, "output_length": 1, "hash_ids": [0]}'
    path.write_text(f"{first}\n{line}\n")
    with pytest.raises(TraceFormatError) as caught:
        read_mooncake(path)
    assert caught.value.line == 2
    assert reason in str(caught.value)
