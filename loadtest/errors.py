"""The loadtest package's exceptions.

    LoadtestError
    └── TraceError            a trace file cannot be used; the message names the file (and line)
        ├── TraceFormatError  a line is not what its format says (bad JSON, field, value, order)
        └── TraceTooLarge     the file, a line, or its agents or turns are past the read limits

Readers raise these and nothing else for bad input: a JSON decoder's or a dataclass's own
`ValueError` is translated where the line number is known, chained with `from`, so a user sees
`trace.jsonl:17: turn 3: 'append' must be an integer ≥ 1, not 0` and never a traceback.
"""

from __future__ import annotations

from pathlib import Path


class LoadtestError(Exception):
    pass


class TraceError(LoadtestError):
    """A trace file cannot be used: `path`, and `line` (1-based) where one line is at fault."""

    def __init__(self, path: Path | str, reason: str, line: int | None = None) -> None:
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {reason}")
        self.path = str(path)
        self.line = line
        self.reason = reason


class TraceFormatError(TraceError):
    pass


class TraceTooLarge(TraceError):
    pass
