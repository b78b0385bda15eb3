"""What a traced request's answer says, read off the bytes the gateway relays. Pure.

Finish reasons are found by a bounded regular-expression scan (the relay stays byte-for-byte);
the completion text, needed only when content tracing is on, is parsed from the JSON answer or
the SSE events at the end. Text kept in spans is cut at `MAX_CONTENT_CHARS`.
"""

from __future__ import annotations

import re

import orjson

MAX_CONTENT_CHARS = 16384
"""Prompt or completion text kept in an event (content tracing on): bounded span size."""
MAX_FINISH_REASONS = 8
_FINISH = re.compile(rb'"finish_reason":\s*"([A-Za-z_]{1,32})"')


def cut(text: str) -> str:
    return text if len(text) <= MAX_CONTENT_CHARS else text[:MAX_CONTENT_CHARS] + "…"


def note_finish_reasons(data: bytes, reasons: list[str]) -> None:
    """Add the finish reasons named in `data` to `reasons` (distinct, at most a few)."""
    for match in _FINISH.finditer(data):
        _note(match, reasons)


def note_finish_reason_at(data: bytes, at: int, reasons: list[str]) -> None:
    """Add the finish reason of the `"finish_reason":` key at `at` in `data` to `reasons`, if it
    names one (not null): one anchored match instead of a scan of the whole of `data`."""
    if (match := _FINISH.match(data, at)) is not None:
        _note(match, reasons)


def _note(match: re.Match[bytes], reasons: list[str]) -> None:
    reason = match.group(1).decode()
    if reason not in reasons and len(reasons) < MAX_FINISH_REASONS:
        reasons.append(reason)


def completion_text(data: bytes) -> str:
    """The generated text of a JSON answer or of an SSE stream's events."""
    events = [e[6:] for e in data.split(b"\n\n") if e.startswith(b"data: {")]
    parts: list[str] = []
    for raw in events or [data]:
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError:
            continue
        choices = obj.get("choices") if isinstance(obj, dict) else None
        for choice in choices if isinstance(choices, list) else ():
            if not isinstance(choice, dict):
                continue
            message = choice.get("delta") or choice.get("message") or {}
            text = message.get("content") if isinstance(message, dict) else None
            text = text if isinstance(text, str) else choice.get("text")
            if isinstance(text, str):
                parts.append(text)
    return "".join(parts)
