"""Bounded reading of JSON Lines trace files, shared by every trace format.

A trace is user input: a wrong path (a disk image, a log) or a runaway generator must fail with a
clear message before it fills memory, not after. So the file size is checked before reading, each
line is read with a length cap, and the number of records is counted; every error names the file
and the 1-based line. Blank lines are allowed (they carry nothing); anything else that is not a
JSON object is an error, never skipped.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from loadtest.errors import TraceFormatError, TraceTooLarge

MiB = 1 << 20


@dataclass(frozen=True, slots=True)
class ReadLimits:
    """How much of a trace file a reader accepts; past any of these it refuses the file."""

    max_bytes: int = 2048 * MiB
    """The whole file."""
    max_line_bytes: int = 16 * MiB
    """One line (one agent of ours, one request of Mooncake's)."""
    max_records: int = 5_000_000
    """Non-blank lines: agents of ours, requests of Mooncake's."""
    max_turns: int = 100_000
    """Turns of one agent."""


def check_size(path: Path, limits: ReadLimits) -> None:
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise TraceFormatError(path, f"cannot read: {exc.strerror or exc}") from exc
    if size > limits.max_bytes:
        raise TraceTooLarge(path, f"{_size(size)} is over the {_size(limits.max_bytes)} limit")


def iter_objects(path: Path, limits: ReadLimits) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield `(line number, object)` for every non-blank line, in order."""
    check_size(path, limits)
    records = 0
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise TraceFormatError(path, f"cannot read: {exc.strerror or exc}") from exc
    with handle:
        for number, raw in enumerate(_lines(handle, path, limits.max_line_bytes), 1):
            if not raw.strip():
                continue
            records += 1
            if records > limits.max_records:
                raise TraceTooLarge(path, f"more than {limits.max_records:,} records", number)
            yield number, parse_object(raw, path, number)


def parse_object(raw: bytes, path: Path, number: int) -> dict[str, Any]:
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise TraceFormatError(path, f"not valid JSON ({exc})", number) from exc
    if not isinstance(value, dict):
        raise TraceFormatError(path, f"expected a JSON object, got {type(value).__name__}", number)
    return value


def first_object(path: Path, limits: ReadLimits) -> dict[str, Any] | None:
    """The first non-blank line's object (to tell formats apart), or None for an empty file."""
    objects = iter_objects(path, limits)
    try:
        return next(objects, (0, None))[1]
    finally:
        objects.close()


def _lines(handle: BinaryIO, path: Path, max_line_bytes: int) -> Iterator[bytes]:
    number = 0
    while raw := handle.readline(max_line_bytes + 1):
        number += 1
        if len(raw) > max_line_bytes and not raw.endswith(b"\n"):
            reason = f"line is longer than the {_size(max_line_bytes)} limit"
            raise TraceTooLarge(path, reason, number)
        yield raw


def _size(count: int) -> str:
    return f"{count / MiB:,.1f} MiB" if count >= MiB else f"{count:,} bytes"
