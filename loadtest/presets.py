"""The paper's three coding-agent datasets (Table 2) and the generator's knobs that reproduce them.

Table 2 reports, per max length, the mean turns per trajectory, the mean append and generation
per turn, the mean final length ("Total") and the mean context. Read as means over all turns
pooled, the row cannot hold: 157 turns × (429 + 176) tokens is 95K, past the 64K max length that
caps every trajectory. It holds as means over trajectories of each trajectory's per-turn average
(`TraceStats.append_agent_mean`): trajectories fill up to near the max length (Total is 87% of it
in all three rows), so a verbose agent ends in few turns and a terse one in many, and the mean
turn count (157) is well above Total / (append + generation) (92). The generator is shaped that
way, and its knobs below were fitted by fixed-point iteration on 16,000 agents per preset, after
which all five columns match within 0.3% (sampling noise at 500 agents: about 5% on the append
column, 2% on turns, under 1% on the rest); `tests/loadtest/test_generator.py` holds them to 10%.

The spread in each trace (what Table 2 does not say) is ours: per-agent verbosity (gamma) and
task length (lognormal), per-turn appends heavy-tailed above a 16-token floor (an `ls` or a whole
file), generation less so.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class PaperRow:
    """One row of Table 2 (500 trajectories each in the paper)."""

    max_len: int
    turns: float
    append: float
    output: float
    total: float
    context: float


@dataclass(frozen=True, slots=True)
class Shape:
    """How one preset's agents are drawn (`loadtest.generator` says how each is used)."""

    first_append: float
    """Mean of the first turn's append: system prompt, tool definitions and the task."""
    append: float
    """Mean append per later turn, above `min_append`, for an agent of average verbosity."""
    output: float
    """Mean generated tokens per turn."""
    verbosity_shape: float
    """Gamma shape of an agent's verbosity (mean 1), which scales all its later appends: the
    smaller, the more terse agents with many turns and verbose ones with few."""
    task_ratio: float
    """Median length an agent's task needs to finish, as a share of the max length."""
    min_append: int = 16
    """Every later turn appends at least this: the tool result's chat-template wrapper."""
    first_sigma: float = 0.3
    append_sigma: float = 1.0
    output_sigma: float = 0.6
    task_sigma: float = 0.5


@dataclass(frozen=True, slots=True)
class Preset:
    name: str
    paper: PaperRow
    shape: Shape


PRESETS: dict[str, Preset] = {
    preset.name: preset
    for preset in (
        Preset(
            "32k",
            PaperRow(32_768, 60, 608, 148, 28_639, 17_183),
            Shape(4_349, 488, 148, 0.940, 1.297),
        ),
        Preset(
            "48k",
            PaperRow(49_152, 106, 474, 172, 42_607, 25_120),
            Shape(5_454, 375, 172, 0.565, 1.234),
        ),
        Preset(
            "64k",
            PaperRow(65_536, 157, 429, 176, 55_958, 32_721),
            Shape(6_263, 340, 176, 0.377, 1.175),
        ),
    )
}
