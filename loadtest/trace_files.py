"""Open a trace file of either format, telling them apart by the first line when asked to.

Ours starts with a header (`format`) or an agent line (`agent`); Mooncake's lines are requests
(`input_length`). Anything else is refused by name rather than guessed at.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from loadtest.errors import TraceFormatError
from loadtest.jsonl import ReadLimits, first_object
from loadtest.mooncake import MooncakeReport, read_mooncake
from loadtest.trace import Trace
from loadtest.trace_io import read_trace


class TraceFormat(StrEnum):
    OURS = "ours"
    MOONCAKE = "mooncake"
    AUTO = "auto"


@dataclass(frozen=True, slots=True)
class LoadedTrace:
    trace: Trace
    format: TraceFormat
    mooncake: MooncakeReport | None = None
    """What the agent inference found, for a Mooncake trace."""


def sniff_format(path: Path, limits: ReadLimits) -> TraceFormat:
    first = first_object(path, limits)
    if first is None:
        raise TraceFormatError(path, "the file has no records to tell its format by")
    if "format" in first or "agent" in first:
        return TraceFormat.OURS
    if "input_length" in first:
        return TraceFormat.MOONCAKE
    keys = ", ".join(sorted(first)[:6]) or "none"
    raise TraceFormatError(
        path, f"neither our format ('agent') nor Mooncake's ('input_length'); keys: {keys}"
    )


def load_trace(
    path: Path, format: TraceFormat = TraceFormat.AUTO, limits: ReadLimits | None = None
) -> LoadedTrace:
    limits = limits or ReadLimits()
    if format is TraceFormat.AUTO:
        format = sniff_format(path, limits)
    if format is TraceFormat.MOONCAKE:
        trace, report = read_mooncake(path, limits)
        return LoadedTrace(trace, format, report)
    return LoadedTrace(read_trace(path, limits), format)
