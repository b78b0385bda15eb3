"""The agent-trajectory model every trace becomes: a `Trace` of `AgentTrace`s of `Turn`s.

It follows the paper's replay rule (A.3): turn *i*'s prompt is everything the agent has seen so
far (each earlier turn's `append` and `output`) plus this turn's `append`, and the server
generates exactly `output` tokens. So a turn costs `append` computed tokens and the rest of its
prompt is a cache hit within its own trajectory; the replay client, the simulator and the stats
all read the same three numbers. Generated traces, Mooncake traces and hand-written ones end up
here, so nothing downstream knows which format a trace came from.

Values are checked when built (not only when read from a file): a turn that appends or generates
nothing, a negative latency or a time going backwards is a bug wherever it comes from.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import NewType

AgentId = NewType("AgentId", str)
MetaValue = str | int | float | bool | None

MAX_AGENT_ID_CHARS = 128


def _count(name: str, value: object) -> None:
    if type(value) is not int or value < 1:
        raise ValueError(f"'{name}' must be an integer ≥ 1, not {value!r}")


def _seconds(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"'{name}' must be a number of seconds, not {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"'{name}' must be a finite number of seconds ≥ 0, not {value!r}")


@dataclass(frozen=True, slots=True)
class Turn:
    """One request of an agent."""

    append: int
    """New prompt tokens this turn (the tool result or user message); computed, never a hit."""
    output: int
    """Tokens the server generates (the replay asks for exactly this many)."""
    tool_s: float = 0.0
    """Tool latency: seconds between the previous turn's last token and this turn's send."""
    at_s: float | None = None
    """When a timestamped trace sent it, in seconds from the trace's start (None: untimed)."""

    def __post_init__(self) -> None:
        _count("append", self.append)
        _count("output", self.output)
        _seconds("tool_s", self.tool_s)
        if self.at_s is not None:
            _seconds("at_s", self.at_s)


@dataclass(frozen=True, slots=True)
class AgentTrace:
    """One agent's whole trajectory, replayed turn by turn in order."""

    agent: AgentId
    """Unique within the trace; the replay sends it as the session id."""
    turns: tuple[Turn, ...]
    arrival_s: float | None = None
    """When the agent starts, in seconds from the trace's start; None: the replay decides
    (all at once offline, Poisson at `--aps` online)."""

    def __post_init__(self) -> None:
        agent = self.agent
        if not isinstance(agent, str) or not 0 < len(agent) <= MAX_AGENT_ID_CHARS:
            raise ValueError(f"'agent' must be a string of 1 to {MAX_AGENT_ID_CHARS} characters")
        if not agent.isprintable() or agent != agent.strip():
            raise ValueError(f"'agent' {agent!r} must be printable without edge whitespace")
        if not self.turns:
            raise ValueError(f"agent {agent!r} has no turns")
        if self.arrival_s is not None:
            _seconds("arrival_s", self.arrival_s)
        last = self.arrival_s
        for number, turn in enumerate(self.turns, 1):
            if turn.at_s is None:
                continue
            if last is not None and turn.at_s < last:
                raise ValueError(f"turn {number}: 'at_s' {turn.at_s} is before {last}")
            last = turn.at_s

    def prompts(self) -> Iterator[int]:
        """Each turn's prompt length: every earlier append and output, plus its own append."""
        context = 0
        for turn in self.turns:
            yield context + turn.append
            context += turn.append + turn.output

    @property
    def total_tokens(self) -> int:
        """The trajectory's final length: all appends and outputs (Table 2's "Total")."""
        return sum(turn.append + turn.output for turn in self.turns)


@dataclass(frozen=True, slots=True)
class Trace:
    """A workload: agents in the order they were written, and where it came from."""

    agents: tuple[AgentTrace, ...]
    meta: Mapping[str, MetaValue] = field(default_factory=dict)
    """Provenance (generator preset and seed, source file, …): flat JSON scalars only."""

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for agent in self.agents:
            if agent.agent in seen:
                raise ValueError(f"agent id {agent.agent!r} is used twice")
            seen.add(agent.agent)
        for key, value in self.meta.items():
            if not isinstance(key, str) or not isinstance(value, MetaValue):
                raise ValueError(f"meta {key!r}: keys must be strings, values JSON scalars")

    @property
    def turns(self) -> int:
        return sum(len(agent.turns) for agent in self.agents)
