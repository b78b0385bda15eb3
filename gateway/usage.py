"""Usage accounting on the relayed responses.

The gateway always asks workers for usage (it needs the token counts), but the client gets the
usage chunk of a stream only when it asked for it (`stream_options.include_usage`). Every usage
object the client sees carries `prompt_tokens_details.cached_tokens` (SGLang omits it when zero).

`SSEUsageFilter` is pure: feed it the decode worker's body chunks in any split, it returns the
bytes to send on. Events without usage pass through as the same bytes, so the common case costs a
substring search per chunk.
"""

from __future__ import annotations

from typing import Any

import orjson

_USAGE = b'"usage"'
_SEP = b"\n\n"


def with_cached_tokens(usage: dict[str, Any]) -> dict[str, Any]:
    details = usage.get("prompt_tokens_details")
    if not isinstance(details, dict):
        details = {}
        usage["prompt_tokens_details"] = details
    details.setdefault("cached_tokens", 0)
    if details["cached_tokens"] is None:
        details["cached_tokens"] = 0
    return usage


def patch_response_usage(body: bytes) -> tuple[bytes, dict[str, Any] | None]:
    """A non-streaming response with `cached_tokens` in its usage, and that usage."""
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body, None
    usage = obj.get("usage") if isinstance(obj, dict) else None
    if not isinstance(usage, dict):
        return body, None
    with_cached_tokens(usage)
    return orjson.dumps(obj), usage


class SSEUsageFilter:
    """Rewrites an OpenAI SSE stream: usage chunk kept (and completed) or dropped."""

    __slots__ = ("_pending", "include_usage", "usage")

    def __init__(self, include_usage: bool) -> None:
        self.include_usage = include_usage
        self.usage: dict[str, Any] | None = None
        self._pending = b""

    def feed(self, chunk: bytes) -> bytes:
        if not self._pending and chunk.endswith(_SEP) and _USAGE not in chunk:
            return chunk  # fast path: whole events, none with usage
        data = self._pending + chunk
        cut = data.rfind(_SEP)
        if cut < 0:
            self._pending = data
            return b""
        self._pending = data[cut + 2 :]
        complete = data[: cut + 2]
        if _USAGE not in complete:
            return complete
        return b"".join(self._event(e) for e in complete.split(_SEP)[:-1])

    def flush(self) -> bytes:
        """Whatever trailing bytes were not a complete event (passed on as they are)."""
        rest, self._pending = self._pending, b""
        return rest

    def _event(self, event: bytes) -> bytes:
        raw = event + _SEP
        if _USAGE not in event or not event.startswith(b"data: {"):
            return raw
        try:
            obj = orjson.loads(event[6:])
        except orjson.JSONDecodeError:
            return raw
        usage = obj.get("usage") if isinstance(obj, dict) else None
        if not isinstance(usage, dict):
            return raw
        self.usage = with_cached_tokens(usage)
        if obj.get("choices"):  # continuous usage stats on a content chunk: keep the content
            if not self.include_usage:
                del obj["usage"]
            return b"data: " + orjson.dumps(obj) + _SEP
        return b"data: " + orjson.dumps(obj) + _SEP if self.include_usage else b""
