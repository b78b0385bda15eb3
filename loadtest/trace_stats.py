"""What a trace asks of a cluster: sizes, spreads, and the cache-hit ratio its replay implies.

Two kinds of mean, because Table 2 needs one and a load test the other (`loadtest.presets`):
pooled over requests (`append.mean`: what an average request appends) and over agents of each
agent's per-turn average (`append_agent_mean`: Table 2's "avg/turn"). `context` is each
request's prompt length (everything before it plus its own append), Table 2's "Context", and
`total_mean` each agent's final length, its "Total". `hit_ratio` is 1 − appended / prompt tokens:
the share of prefill that is a hit when hits stay within a trajectory and nothing is evicted, as
in the paper's evaluation (A.4).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from loadtest.trace import Trace


@dataclass(frozen=True, slots=True)
class Summary:
    mean: float
    p50: float
    p99: float
    max: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Summary:
        """Nearest-rank percentiles of `values` (all zeros when empty)."""
        if not values:
            return cls(0.0, 0.0, 0.0, 0.0)
        ordered = sorted(values)
        return cls(
            sum(ordered) / len(ordered),
            _rank(ordered, 0.50),
            _rank(ordered, 0.99),
            ordered[-1],
        )


def _rank(ordered: Sequence[float], share: float) -> float:
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


@dataclass(frozen=True, slots=True)
class TraceStats:
    agents: int
    turns: int
    turns_per_agent: Summary
    append: Summary
    """New prompt tokens per request."""
    output: Summary
    """Generated tokens per request."""
    context: Summary
    """Prompt tokens per request: the agent's earlier appends and outputs, plus this append."""
    append_agent_mean: float
    """Each agent's mean append per turn, averaged over agents (Table 2's "Append")."""
    output_agent_mean: float
    """Each agent's mean output per turn, averaged over agents (Table 2's "Gen")."""
    total_mean: float
    """Each agent's final length (all its appends and outputs), averaged (Table 2's "Total")."""
    appended_tokens: int
    output_tokens: int
    prompt_tokens: int
    """Prefill work if nothing were cached: the sum of every request's prompt."""
    total_tokens: int
    """Distinct tokens in the trace: every append and output once."""
    hit_ratio: float
    """1 − appended / prompt tokens."""
    tool_s_mean: float
    """Mean tool latency before a turn, over every turn but each agent's first."""
    span_s: float | None
    """First to last send time, for timestamped traces (None when untimed)."""


def trace_stats(trace: Trace) -> TraceStats:
    turns_per_agent: list[int] = []
    appends: list[int] = []
    outputs: list[int] = []
    prompts: list[int] = []
    append_means: list[float] = []
    output_means: list[float] = []
    totals: list[int] = []
    tool_s = 0.0
    times: list[float] = []
    for agent in trace.agents:
        turns = agent.turns
        turns_per_agent.append(len(turns))
        appends.extend(turn.append for turn in turns)
        outputs.extend(turn.output for turn in turns)
        prompts.extend(agent.prompts())
        append_means.append(sum(turn.append for turn in turns) / len(turns))
        output_means.append(sum(turn.output for turn in turns) / len(turns))
        totals.append(agent.total_tokens)
        tool_s += sum(turn.tool_s for turn in turns[1:])
        times.extend(turn.at_s for turn in turns if turn.at_s is not None)
    appended, prompt = sum(appends), sum(prompts)
    later_turns = len(appends) - len(trace.agents)
    return TraceStats(
        agents=len(trace.agents),
        turns=len(appends),
        turns_per_agent=Summary.of(turns_per_agent),
        append=Summary.of(appends),
        output=Summary.of(outputs),
        context=Summary.of(prompts),
        append_agent_mean=_mean(append_means),
        output_agent_mean=_mean(output_means),
        total_mean=_mean(totals),
        appended_tokens=appended,
        output_tokens=sum(outputs),
        prompt_tokens=prompt,
        total_tokens=appended + sum(outputs),
        hit_ratio=1 - appended / prompt if prompt else 0.0,
        tool_s_mean=tool_s / later_turns if later_turns else 0.0,
        span_s=max(times) - min(times) if times else None,
    )


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0
