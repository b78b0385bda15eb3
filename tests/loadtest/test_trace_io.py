"""Our trace format: what is written reads back equal, and every bad line is named."""

from __future__ import annotations

from pathlib import Path

import pytest

from loadtest.errors import TraceFormatError, TraceTooLarge
from loadtest.jsonl import ReadLimits
from loadtest.trace import AgentId, AgentTrace, Trace, Turn
from loadtest.trace_io import read_trace, write_trace


def _trace() -> Trace:
    return Trace(
        (
            AgentTrace(AgentId("a0"), (Turn(5000, 120), Turn(300, 80, 1.25), Turn(1, 1, 0.0))),
            AgentTrace(
                AgentId("agent with spaces"),
                (Turn(700, 50, at_s=3.5), Turn(40, 60, 0.5, at_s=9.0)),
                arrival_s=3.5,
            ),
        ),
        {"preset": "64k", "seed": 7, "note": None, "ok": True, "scale": 0.5},
    )


def test_what_is_written_reads_back_equal(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    write_trace(path, _trace())
    assert read_trace(path) == _trace()
    assert not list(tmp_path.glob(".*partial"))


def test_the_same_trace_gives_the_same_bytes_and_leaves_out_defaults(tmp_path: Path) -> None:
    one, two = tmp_path / "1.jsonl", tmp_path / "2.jsonl"
    write_trace(one, _trace())
    write_trace(two, _trace())
    assert one.read_bytes() == two.read_bytes()
    lines = one.read_text().splitlines()
    assert lines[0].startswith('{"format":"dualpath-trace","version":1')
    assert lines[1] == (
        '{"agent":"a0","turns":[{"append":5000,"output":120},'
        '{"append":300,"output":80,"tool_s":1.25},{"append":1,"output":1}]}'
    )


def test_a_hand_written_trace_needs_no_header_and_may_have_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text('\n{"agent": 7, "turns": [{"append": 10, "output": 2, "tool_s": 1}]}\n\n')
    trace = read_trace(path)
    assert trace.meta == {}
    assert trace.agents == (AgentTrace(AgentId("7"), (Turn(10, 2, 1.0),)),)


GOOD = '{"agent": "a", "turns": [{"append": 10, "output": 2}]}'


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object, got list"),
        ('{"turns": []}', "missing 'agent'"),
        ('{"agent": "b", "turns": {}}', "'turns' must be an array"),
        ('{"agent": "b", "turns": []}', "has no turns"),
        ('{"agent": "b", "turns": [{"append": 0, "output": 1}]}', "turn 1: 'append' must be"),
        ('{"agent": "b", "turns": [{"append": 1, "output": true}]}', "turn 1: 'output' must be"),
        ('{"agent": "b", "turns": [{"append": 1}]}', "turn 1: missing 'output'"),
        ('{"agent": "b", "turns": [{"apend": 1, "output": 1}]}', "unknown field(s) apend"),
        ('{"agent": "b", "turns": [{"append": 1, "output": 1, "tool_s": -1}]}', "'tool_s'"),
        ('{"agent": "b", "turns": [{"append": 1, "output": 1}], "x": 1}', "unknown field(s) x"),
        ('{"agent": "", "turns": [{"append": 1, "output": 1}]}', "'agent' must be a string"),
        ('{"agent": "a", "turns": [{"append": 1, "output": 1}]}', "'a' is already on line 1"),
        (
            '{"agent": "b", "turns": [{"append": 1, "output": 1, "at_s": 5}, '
            '{"append": 1, "output": 1, "at_s": 4}]}',
            "turn 2: 'at_s' 4.0 is before 5.0",
        ),
        ('{"format": "dualpath-trace", "version": 1}', "the header must be the first line"),
    ],
)
def test_a_malformed_line_is_an_error_naming_its_line(
    tmp_path: Path, line: str, reason: str
) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(f"{GOOD}\n\n{line}\n{GOOD.replace('a', 'c', 1)}\n")
    with pytest.raises(TraceFormatError) as caught:
        read_trace(path)
    assert caught.value.line == 3
    assert str(caught.value).startswith(f"{path}:3: ")
    assert reason in str(caught.value)


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        ('{"format": "other", "version": 1}', "'format' is 'other'"),
        ('{"format": "dualpath-trace", "version": 2}', "version 2 is newer"),
        ('{"format": "dualpath-trace", "version": 1, "meta": {"a": [1]}}', "JSON scalars"),
    ],
)
def test_a_bad_header_is_refused(tmp_path: Path, header: str, reason: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(f"{header}\n{GOOD}\n")
    with pytest.raises(TraceFormatError, match=reason):
        read_trace(path)


def test_reading_is_bounded(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text(f"{GOOD}\n" + GOOD.replace('"a"', '"b"') + "\n")
    with pytest.raises(TraceTooLarge, match="110 bytes is over the 10 bytes limit"):
        read_trace(path, ReadLimits(max_bytes=10))
    with pytest.raises(TraceTooLarge, match=r":1: line is longer"):
        read_trace(path, ReadLimits(max_line_bytes=20))
    with pytest.raises(TraceTooLarge, match=r":2: more than 1 records"):
        read_trace(path, ReadLimits(max_records=1))
    with pytest.raises(TraceTooLarge, match=r":1: 1 turns, over the 0 limit"):
        read_trace(path, ReadLimits(max_turns=0))


def test_a_missing_file_is_a_trace_error(tmp_path: Path) -> None:
    with pytest.raises(TraceFormatError, match="cannot read"):
        read_trace(tmp_path / "absent.jsonl")
