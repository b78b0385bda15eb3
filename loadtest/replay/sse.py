"""A bounded Server-Sent Events decoder for OpenAI-style streams. Pure: no network, no clock.

Feed it the body's bytes in any split; it returns each complete event's `data` (the lines of an
event joined by `\\n`), `[DONE]` included. Events are separated by a blank line (`\\n\\n`, or
`\\r\\n\\r\\n`); comment lines (`:`) and other fields (`event:`, `id:`) are dropped. An event larger
than `max_event_bytes` raises `ReplayStreamError` instead of growing the buffer without end.
"""

from __future__ import annotations

from loadtest.replay.errors import ReplayStreamError

DONE = b"[DONE]"
MAX_EVENT_BYTES = 1 << 20


class SSEDecoder:
    __slots__ = ("_buffer", "max_event_bytes")

    def __init__(self, max_event_bytes: int = MAX_EVENT_BYTES) -> None:
        self._buffer = b""
        self.max_event_bytes = max_event_bytes

    def feed(self, chunk: bytes) -> list[bytes]:
        data = self._buffer + chunk
        if b"\r" in data:
            data = data.replace(b"\r\n", b"\n")
        events = data.split(b"\n\n")
        self._buffer = events.pop()
        if len(self._buffer) > self.max_event_bytes:
            raise ReplayStreamError(f"an SSE event is over {self.max_event_bytes} bytes")
        out = []
        for event in events:
            payload = _data(event)
            if payload is not None:
                out.append(payload)
        return out

    @property
    def pending(self) -> bool:
        """Bytes that are not yet a complete event (a stream that ends here was cut)."""
        return bool(self._buffer.strip())


def _data(event: bytes) -> bytes | None:
    lines = [
        line[5:].removeprefix(b" ") for line in event.split(b"\n") if line.startswith(b"data:")
    ]
    return b"\n".join(lines) if lines else None
