"""Our trace format on disk: JSON Lines, a header line, then one line per agent.

    {"format": "dualpath-trace", "version": 1, "meta": {"preset": "64k", "seed": 1}}
    {"agent": "a0", "turns": [{"append": 6120, "output": 171}, {"append": 388, "output": 160,
    "tool_s": 1.204}]}                          (one line in the file)
    {"agent": "a1", "arrival_s": 12.5, "turns": [{"append": 5120, "output": 90, "at_s": 12.5}]}

Header: `format` is "dualpath-trace"; `version` is 1 (a reader refuses a newer one); `meta` is a
flat object of JSON scalars saying where the trace came from. Always written; optional on reading
so a hand-written trace can be just agent lines.

Agent line: `agent`, a unique id (1 to 128 printable characters; an integer is read as its
decimal string); `turns`, a non-empty array replayed in order; optional `arrival_s`, seconds from
the trace's start when the agent begins (absent: the replay picks arrivals).

Turn: `append`, new prompt tokens (integer ≥ 1); `output`, tokens to generate (integer ≥ 1);
optional `tool_s`, seconds of tool latency before the turn is sent (default 0); optional `at_s`,
seconds from the trace's start when a timestamped trace sent it (non-decreasing within an agent).
Turn *i*'s prompt is all earlier appends and outputs plus its own append (`loadtest.trace`).

Unknown fields are errors rather than ignored: a misspelt `apend` must not turn into a default.
New fields come with a new version. The writer leaves out defaults (`tool_s` 0, absent `at_s`
and `arrival_s`) and always writes the same bytes for the same trace.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import orjson

from loadtest.errors import TraceFormatError, TraceTooLarge
from loadtest.jsonl import ReadLimits, iter_objects
from loadtest.trace import AgentId, AgentTrace, MetaValue, Trace, Turn

FORMAT_NAME = "dualpath-trace"
FORMAT_VERSION = 1

_HEADER_KEYS = frozenset({"format", "version", "meta"})
_AGENT_KEYS = frozenset({"agent", "turns", "arrival_s"})
_TURN_KEYS = frozenset({"append", "output", "tool_s", "at_s"})


def write_trace(path: Path, trace: Trace) -> None:
    """Write `trace` to `path` (through a temporary file, so a reader never sees half of it)."""
    header = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "meta": dict(trace.meta)}
    partial = path.with_name(f".{path.name}.partial")
    try:
        with partial.open("wb") as out:
            out.write(orjson.dumps(header) + b"\n")
            for agent in trace.agents:
                out.write(orjson.dumps(agent_json(agent)) + b"\n")
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def agent_json(agent: AgentTrace) -> dict[str, Any]:
    line: dict[str, Any] = {"agent": agent.agent}
    if agent.arrival_s is not None:
        line["arrival_s"] = agent.arrival_s
    line["turns"] = [_turn_json(turn) for turn in agent.turns]
    return line


def _turn_json(turn: Turn) -> dict[str, Any]:
    line: dict[str, Any] = {"append": turn.append, "output": turn.output}
    if turn.tool_s:
        line["tool_s"] = turn.tool_s
    if turn.at_s is not None:
        line["at_s"] = turn.at_s
    return line


def read_trace(path: Path, limits: ReadLimits | None = None) -> Trace:
    """Read one of our trace files; any malformed line raises `TraceError` naming it."""
    limits = limits or ReadLimits()
    meta: dict[str, MetaValue] = {}
    agents: list[AgentTrace] = []
    lines: dict[str, int] = {}
    for number, value in iter_objects(path, limits):
        if "format" in value:
            if lines or meta:
                raise TraceFormatError(path, "the header must be the first line", number)
            meta = _header(value, path, number)
            lines[""] = number
            continue
        agent = _agent(value, path, number, limits)
        if agent.agent in lines:
            where = lines[agent.agent]
            raise TraceFormatError(
                path, f"agent {agent.agent!r} is already on line {where}", number
            )
        lines[agent.agent] = number
        agents.append(agent)
    return Trace(tuple(agents), meta)


def _header(value: dict[str, Any], path: Path, number: int) -> dict[str, MetaValue]:
    _no_unknown(value, _HEADER_KEYS, path, number)
    if value["format"] != FORMAT_NAME:
        raise TraceFormatError(
            path, f"'format' is {value['format']!r}, not {FORMAT_NAME!r}", number
        )
    version = value.get("version")
    if type(version) is not int or version < 1:
        raise TraceFormatError(path, f"'version' must be an integer ≥ 1, not {version!r}", number)
    if version > FORMAT_VERSION:
        raise TraceFormatError(
            path, f"version {version} is newer than this reader's {FORMAT_VERSION}", number
        )
    meta = value.get("meta", {})
    if not isinstance(meta, dict) or not all(isinstance(v, MetaValue) for v in meta.values()):
        raise TraceFormatError(path, "'meta' must be an object of JSON scalars", number)
    return meta


def _agent(value: dict[str, Any], path: Path, number: int, limits: ReadLimits) -> AgentTrace:
    _no_unknown(value, _AGENT_KEYS, path, number)
    for key in ("agent", "turns"):
        if key not in value:
            raise TraceFormatError(path, f"missing '{key}'", number)
    agent_id, turns = value["agent"], value["turns"]
    if type(agent_id) is int:
        agent_id = str(agent_id)
    if not isinstance(turns, list):
        raise TraceFormatError(path, "'turns' must be an array", number)
    if len(turns) > limits.max_turns:
        raise TraceTooLarge(
            path, f"{len(turns):,} turns, over the {limits.max_turns:,} limit", number
        )
    built = []
    for index, turn in enumerate(turns, 1):
        try:
            built.append(_turn(turn))
        except ValueError as exc:
            raise TraceFormatError(path, f"turn {index}: {exc}", number) from exc
    try:
        return AgentTrace(AgentId(agent_id), tuple(built), _seconds(value.get("arrival_s")))
    except ValueError as exc:
        raise TraceFormatError(path, str(exc), number) from exc


def _turn(value: object) -> Turn:
    if not isinstance(value, dict):
        raise ValueError("must be an object")
    unknown = value.keys() - _TURN_KEYS
    if unknown:
        raise ValueError(f"unknown field(s) {', '.join(sorted(unknown))}")
    for key in ("append", "output"):
        if key not in value:
            raise ValueError(f"missing '{key}'")
    tool_s = _seconds(value.get("tool_s", 0.0))
    return Turn(value["append"], value["output"], tool_s, _seconds(value.get("at_s")))


def _seconds(value: Any) -> Any:
    """JSON integers as floats, so a trace reads back equal whichever way a number was written."""
    return float(value) if type(value) is int else value


def _no_unknown(value: dict[str, Any], known: frozenset[str], path: Path, number: int) -> None:
    unknown = value.keys() - known
    if unknown:
        raise TraceFormatError(path, f"unknown field(s) {', '.join(sorted(unknown))}", number)
