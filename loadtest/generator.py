"""Synthetic coding-agent traces with the shapes of the paper's Table 2.

Each agent, drawn from its own seeded stream (so agent *i* is the same whatever `agents` is):

1. a verbosity (gamma, mean 1, shape below 1: most agents terse, a few very verbose) that scales
   every append after the first: some agents read whole files, some run `ls`;
2. a task length (lognormal around `task_ratio` × max length, capped at the max length): how long
   the trajectory grows before the task is done, or before the rollout is cut at the max length
   as the paper's training rollouts are;
3. a first turn whose append is the system prompt, tool definitions and task (a few thousand
   tokens), then turns each appending `min_append` (the tool result's template) plus a lognormal
   amount (× verbosity) and generating a lognormal amount, each after a tool latency, until the
   next turn would not fit in the task length. No turn's prompt plus output is ever
   past the max length.

Tool latency is drawn from a second stream per agent, so changing it (or setting it to 0, as the
paper's evaluation does) changes no token count. The same preset, agents and seed always give
byte-identical files: the only randomness is `random.Random` seeded here.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from loadtest.presets import PRESETS, Preset
from loadtest.trace import AgentId, AgentTrace, Trace, Turn

MAX_TURNS = 4_096
"""A guard: no preset comes near it (the 64K preset's longest agents run ~350 turns)."""
DEFAULT_TOOL_LATENCY_S = 1.5


@dataclass(frozen=True, slots=True)
class ToolLatency:
    """Seconds between a turn's last token and the next turn's send: the tools' run time."""

    mean_s: float = DEFAULT_TOOL_LATENCY_S
    """Mean of a lognormal; 0 gives zeros everywhere."""
    sigma: float = 0.8

    def __post_init__(self) -> None:
        if not (math.isfinite(self.mean_s) and self.mean_s >= 0 and self.sigma >= 0):
            raise ValueError("tool latency mean and sigma must be finite and ≥ 0")


def preset_named(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}") from None


def generate(
    preset: str | Preset, agents: int, seed: int, tool_latency: ToolLatency | None = None
) -> Trace:
    """`agents` trajectories shaped like `preset`'s row of Table 2."""
    if agents < 1:
        raise ValueError(f"agents must be ≥ 1, not {agents}")
    chosen = preset_named(preset) if isinstance(preset, str) else preset
    tools = tool_latency or ToolLatency()
    rng = random.Random(seed)
    built = []
    for index in range(agents):
        tokens_rng = random.Random(rng.getrandbits(64))
        tools_rng = random.Random(rng.getrandbits(64))
        built.append(_agent(AgentId(f"a{index}"), chosen, tools, tokens_rng, tools_rng))
    meta = {
        "generator": "dualpath trace gen",
        "preset": chosen.name,
        "agents": agents,
        "seed": seed,
        "max_len": chosen.paper.max_len,
        "tool_latency_mean_s": tools.mean_s,
        "tool_latency_sigma": tools.sigma,
    }
    return Trace(tuple(built), meta)


def _agent(
    agent: AgentId,
    preset: Preset,
    tools: ToolLatency,
    rng: random.Random,
    tools_rng: random.Random,
) -> AgentTrace:
    shape, max_len = preset.shape, preset.paper.max_len
    verbosity = max(rng.gammavariate(shape.verbosity_shape, 1 / shape.verbosity_shape), 1e-6)
    task = min(max_len, _lognormal(rng, shape.task_ratio * max_len, shape.task_sigma))
    output = min(_tokens(rng, shape.output, shape.output_sigma), max_len - 1)
    first = min(_tokens(rng, shape.first_append, shape.first_sigma), max_len - output)
    turns = [Turn(first, output)]
    length = first + output
    while len(turns) < MAX_TURNS:
        append = shape.min_append + round(
            _lognormal(rng, verbosity * shape.append, shape.append_sigma)
        )
        output = _tokens(rng, shape.output, shape.output_sigma)
        if length + append + output > task:
            break
        turns.append(Turn(append, output, _tool_s(tools_rng, tools)))
        length += append + output
    return AgentTrace(agent, tuple(turns))


def _tool_s(rng: random.Random, tools: ToolLatency) -> float:
    if tools.mean_s == 0:
        return 0.0
    return round(_lognormal(rng, tools.mean_s, tools.sigma), 3)


def _tokens(rng: random.Random, mean: float, sigma: float) -> int:
    return max(1, round(_lognormal(rng, mean, sigma)))


def _lognormal(rng: random.Random, mean: float, sigma: float) -> float:
    """A lognormal draw with this mean (not median): μ = ln(mean) − σ²/2."""
    return rng.lognormvariate(math.log(mean) - sigma * sigma / 2, sigma)
