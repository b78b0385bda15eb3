"""The Mooncake trace format on input, turned into our agent `Trace`.

One JSON object per line, one request per line, in time order (Mooncake FAST'25, also read by
NVIDIA AIPerf and Dynamo):

    {"timestamp": 0, "input_length": 6758, "output_length": 500, "hash_ids": [0, 1, 2, …, 13]}

- `input_length` (integer ≥ 1): prompt tokens; `output_length` (integer ≥ 0): generated tokens.
- `timestamp` (optional): milliseconds from the trace's start; never decreasing down the file.
- `hash_ids` (optional): one id per `block_tokens` (512) tokens of the prompt, each naming the
  whole prefix up to and including its block, so `len(hash_ids) == ceil(input_length / 512)`.
- `session_id` (optional): the conversation; `delay` (optional): milliseconds to wait after the
  conversation's previous turn before sending this one.
- Other fields (AIPerf's `text_input`, `messages`, `tools`, `extra`) are ignored.

Conversion. A request with a `session_id` belongs to that agent. One without continues the agent
whose last prompt its `hash_ids` extend (`prefix_sessions`: an LRU map from an agent's tail
block ids, the first block excluded as the shared system prompt), or starts a new agent
(`inferred-N`). The request becomes one turn of its agent:

- `shared` = the agent's whole context (its earlier appends and outputs, as replayed) when the
  prompt is at least that long (a conversation resends its history and adds to it); otherwise
  the blocks the prompt is known to share with the agent's last prompt (`shortened`: the
  history was cut, and the replayed prompt is longer than the original by the difference);
  0 for an agent's first request.
- `append` = `input_length − shared`, `output` = `output_length` (each raised to 1 if 0: the
  replay asks for at least one token of each; counted), `tool_s` = `delay` / 1000 (else 0),
  `at_s` = `timestamp` / 1000; the agent's `arrival_s` is its first turn's `at_s`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loadtest.errors import TraceFormatError
from loadtest.jsonl import ReadLimits, iter_objects
from loadtest.prefix_sessions import Match, PrefixSessions
from loadtest.trace import AgentId, AgentTrace, Trace, Turn

BLOCK_TOKENS = 512


@dataclass(frozen=True, slots=True)
class MooncakeRequest:
    input_length: int
    output_length: int
    hash_ids: tuple[int, ...] = ()
    timestamp_ms: float | None = None
    session_id: str | None = None
    delay_ms: float | None = None


@dataclass(frozen=True, slots=True)
class MooncakeReport:
    """What the conversion found: how many agents, and how much of each prompt they share."""

    requests: int
    agents: int
    inferred_agents: int
    """Agents found from shared prefixes (the rest were named by `session_id`)."""
    continued: int
    """Requests that continued an agent rather than starting one."""
    shortened: int
    """Continued requests shorter than their agent's context (the history was cut)."""
    raised_to_one: int
    """Appends or outputs of 0 tokens, replayed as 1."""
    input_tokens: int
    """Sum of `input_length`."""
    shared_tokens: int
    """Sum of the prompt tokens shared with the agent's earlier context."""

    @property
    def hit_ratio(self) -> float:
        """Of the original prompts' tokens, the share an agent had seen before."""
        return self.shared_tokens / self.input_tokens if self.input_tokens else 0.0


@dataclass(slots=True)
class _Tally:
    requests: int = 0
    continued: int = 0
    shortened: int = 0
    raised: int = 0
    input: int = 0
    shared: int = 0


@dataclass(slots=True)
class _Agent:
    id: AgentId
    turns: list[Turn] = field(default_factory=list)
    context: int = 0


def read_mooncake(
    path: Path,
    limits: ReadLimits | None = None,
    *,
    block_tokens: int = BLOCK_TOKENS,
    max_tails: int = 200_000,
) -> tuple[Trace, MooncakeReport]:
    """Read a Mooncake trace file and infer its agents; a malformed line raises `TraceError`."""
    limits = limits or ReadLimits()
    conversion = Conversion(path, block_tokens=block_tokens, max_tails=max_tails)
    for number, value in iter_objects(path, limits):
        conversion.add(number, parse_request(value, path, number, block_tokens))
    return conversion.finish()


class Conversion:
    """Requests in, in time order, one at a time; `finish` gives the trace and the report."""

    def __init__(
        self, path: Path, *, block_tokens: int = BLOCK_TOKENS, max_tails: int = 200_000
    ) -> None:
        self._path = path
        self._block_tokens = block_tokens
        self._sessions = PrefixSessions(max_tails=max_tails)
        self._agents: list[_Agent] = []
        self._named: dict[str, int] = {}
        self._last_ms = 0.0
        self._tally = _Tally()

    def add(self, number: int, request: MooncakeRequest) -> None:
        self._check_order(number, request.timestamp_ms)
        match = self._sessions.match(request.hash_ids)
        index = self._agent_index(request, match)
        agent = self._agents[index]
        known = match.blocks * self._block_tokens if match and match.agent == index else 0
        shared = _shared(request.input_length, agent.context, known, bool(agent.turns))
        append = request.input_length - shared
        tally, continued = self._tally, bool(agent.turns)
        tally.requests += 1
        tally.continued += continued
        tally.shortened += continued and request.input_length < agent.context
        tally.raised += (append < 1) + (request.output_length < 1)
        tally.input += request.input_length
        tally.shared += shared
        turn = _turn(request, max(append, 1))
        agent.turns.append(turn)
        agent.context += turn.append + turn.output
        if request.hash_ids:
            self._sessions.remember(
                index, request.hash_ids, request.input_length, self._block_tokens
            )

    def finish(self) -> tuple[Trace, MooncakeReport]:
        tally, agents = self._tally, self._agents
        report = MooncakeReport(
            requests=tally.requests,
            agents=len(agents),
            inferred_agents=len(agents) - len(self._named),
            continued=tally.continued,
            shortened=tally.shortened,
            raised_to_one=tally.raised,
            input_tokens=tally.input,
            shared_tokens=tally.shared,
        )
        built = tuple(AgentTrace(a.id, tuple(a.turns), a.turns[0].at_s) for a in agents)
        meta = {"source": "mooncake", "file": self._path.name, "block_tokens": self._block_tokens}
        try:
            return Trace(built, meta), report
        except ValueError as exc:
            raise TraceFormatError(self._path, str(exc)) from exc

    def _check_order(self, number: int, timestamp_ms: float | None) -> None:
        if timestamp_ms is None:
            return
        if timestamp_ms < self._last_ms:
            reason = f"timestamp {timestamp_ms:g} is before an earlier {self._last_ms:g}"
            raise TraceFormatError(self._path, f"{reason}: the trace must be in time order", number)
        self._last_ms = timestamp_ms

    def _agent_index(self, request: MooncakeRequest, match: Match | None) -> int:
        if request.session_id is None and match is not None:
            return match.agent
        if request.session_id is not None and request.session_id in self._named:
            return self._named[request.session_id]
        index = len(self._agents)
        if request.session_id is not None:
            self._named[request.session_id] = index
            self._agents.append(_Agent(AgentId(request.session_id)))
        else:
            self._agents.append(_Agent(AgentId(f"inferred-{index - len(self._named)}")))
        return index


def _shared(input_length: int, context: int, known: int, continued: bool) -> int:
    if not continued:
        return 0
    if input_length >= context:
        return context
    return min(known, input_length)


def _turn(request: MooncakeRequest, append: int) -> Turn:
    delay = request.delay_ms
    at = request.timestamp_ms
    return Turn(
        append,
        max(request.output_length, 1),
        delay / 1000 if delay is not None else 0.0,
        at / 1000 if at is not None else None,
    )


def parse_request(
    value: dict[str, Any], path: Path, number: int, block_tokens: int
) -> MooncakeRequest:
    """One line's request, checked; any fault raises `TraceFormatError` naming the line."""
    try:
        return _request(value, block_tokens)
    except ValueError as exc:
        raise TraceFormatError(path, str(exc), number) from exc


def _request(value: dict[str, Any], block_tokens: int) -> MooncakeRequest:
    input_length = _integer(value, "input_length", minimum=1)
    output_length = _integer(value, "output_length", minimum=0)
    hash_ids = value.get("hash_ids", [])
    if not isinstance(hash_ids, list) or not all(_is_int(i) for i in hash_ids):
        raise ValueError("'hash_ids' must be an array of integers")
    blocks = math.ceil(input_length / block_tokens)
    if hash_ids and len(hash_ids) != blocks:
        raise ValueError(
            f"{len(hash_ids)} hash_ids for input_length {input_length}: expected {blocks} "
            f"(one per {block_tokens}-token block)"
        )
    session = value.get("session_id")
    valid = _is_int(session) or (isinstance(session, str) and len(session) > 0)
    if session is not None and not valid:
        raise ValueError("'session_id' must be a non-empty string or an integer")
    return MooncakeRequest(
        input_length,
        output_length,
        tuple(hash_ids),
        _milliseconds(value, "timestamp"),
        str(session) if session is not None else None,
        _milliseconds(value, "delay"),
    )


def _is_int(value: object) -> bool:
    return type(value) is int


def _integer(value: dict[str, Any], key: str, *, minimum: int) -> int:
    if key not in value:
        raise ValueError(f"missing '{key}'")
    number = value[key]
    if not _is_int(number) or number < minimum:
        raise ValueError(f"'{key}' must be an integer ≥ {minimum}, not {number!r}")
    return int(number)


def _milliseconds(value: dict[str, Any], key: str) -> float | None:
    number = value.get(key)
    if number is None:
        return None
    if isinstance(number, bool) or not isinstance(number, int | float):
        raise ValueError(f"'{key}' must be a number of milliseconds, not {number!r}")
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"'{key}' must be finite and ≥ 0, not {number!r}")
    return float(number)
