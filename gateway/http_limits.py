"""Request-head limits under uvicorn's httptools protocol: 431 past a size or a field count.

uvicorn with httptools bounds neither the size nor the number of request headers, so a client
could stream one request's headers until the gateway's memory runs out. This protocol counts the
bytes of each request head as they arrive, and its fields once they are parsed, and past
`LimitsConfig.max_header_bytes` or `max_headers` answers 431 with an OpenAI-shaped body and
closes the connection (the rest of that head is never parsed). It closes as servers do after
an early answer (nginx's "lingering close"): its side first, then reading and dropping what the
client still sends for up to `LINGER_S`, since closing on unread bytes sends a reset that can
destroy the 431 before the client reads it.

It hooks three of uvicorn's methods (`data_received`, `on_headers_complete`,
`send_400_response`); `tests/gateway/test_input_hardening.py` holds it to a real socket.
"""

from __future__ import annotations

from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway.errors import HeadersTooLarge
from gateway.settings import LimitsConfig


class _HeadRefused(Exception):
    """Raised inside the parser's callback: httptools turns it into the parser error that
    makes uvicorn call `send_400_response`, which answers 431 instead."""


_DEFAULTS = LimitsConfig()
LINGER_S = 2.0


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    max_header_bytes = _DEFAULTS.max_header_bytes
    max_headers = _DEFAULTS.max_headers

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_bytes: int | None = 0
        """Bytes received since the current request head began; None while a body is read."""
        self._refusal: HeadersTooLarge | None = None
        self._lingering = False

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            return  # answered 431: drop the rest of what the client sends
        if self._head_bytes is not None:
            self._head_bytes += len(data)
        super().data_received(data)
        # Still inside a head past the limit: it can only grow, so refuse it now. (The last
        # chunk of a head may carry body bytes too; that head is measured exactly below.)
        head = self._head_bytes
        if head is not None and head > self.max_header_bytes and not self.transport.is_closing():
            self._refusal = HeadersTooLarge(
                f"request head is over the {self.max_header_bytes}-byte limit"
            )
            self.send_400_response("")

    def on_headers_complete(self) -> None:
        self._head_bytes = None
        size = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
        if size > self.max_header_bytes:
            self._refusal = HeadersTooLarge(
                f"request headers of {size} bytes are over the {self.max_header_bytes}-byte limit"
            )
        elif len(self.headers) > self.max_headers:
            self._refusal = HeadersTooLarge(
                f"{len(self.headers)} request headers are over the limit of {self.max_headers}"
            )
        if self._refusal is not None:
            raise _HeadRefused
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._head_bytes = 0  # the next request's head starts

    def send_400_response(self, msg: str) -> None:
        if self._refusal is None:
            super().send_400_response(msg)
            return
        if self.cycle is not None and not self.cycle.response_complete:
            self.transport.close()  # an earlier request's answer is being written: no 431 in it
            return
        body = self._refusal.json_bytes()
        head = (
            f"HTTP/1.1 431 Request Header Fields Too Large\r\n"
            f"content-type: application/json\r\ncontent-length: {len(body)}\r\n"
            f"connection: close\r\n\r\n"
        )
        self.transport.write(head.encode("ascii") + body)
        if not self.transport.can_write_eof():
            self.transport.close()
            return
        self.transport.write_eof()
        self._lingering = True
        self.loop.call_later(LINGER_S, self.transport.close)


def limited_protocol(limits: LimitsConfig) -> type[LimitedHttpToolsProtocol]:
    """The protocol class for `uvicorn.Config(http=...)`, with these limits."""
    attrs = {"max_header_bytes": limits.max_header_bytes, "max_headers": limits.max_headers}
    return type("LimitedHttpToolsProtocol", (LimitedHttpToolsProtocol,), attrs)
