"""Ships the gateway's ended spans to its span-export process (`gateway/span_export.py`).

Rows are batched (up to `FLUSH_SPANS` spans or `FLUSH_AFTER_S` after the first) and serialised
together at the flush, one `orjson.dumps` per batch rather than per span, into one message on a
Unix SEQPACKET socket pair (split when over `MAX_MESSAGE` bytes): one non-blocking send per
batch, well under a µs per span. Bounded: a batch that cannot be sent waits in a backlog of
`MAX_BACKLOG` messages, and beyond it the oldest batch is dropped and counted, the way the SDK's
batch processor drops spans when its queue is full. Tracing never blocks or fails a request.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import socket
import subprocess
import sys

import orjson

from gateway.span_records import MAX_MESSAGE, Row

log = logging.getLogger(__name__)

FLUSH_SPANS = 256
FLUSH_AFTER_S = 0.2
MAX_BACKLOG = 64


class SpanShipper:
    """The export process and the channel to it; `ship` is called on the event loop."""

    def __init__(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        ours.setblocking(False)
        self._sock = ours
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.span_export", str(theirs.fileno())],
            pass_fds=(theirs.fileno(),),
        )
        theirs.close()
        self._rows: list[Row] = []
        self._backlog: collections.deque[tuple[bytes, int]] = collections.deque()
        self._timer: asyncio.TimerHandle | None = None
        self.shipped = 0
        self.dropped = 0

    @property
    def pid(self) -> int:
        return self._proc.pid

    @property
    def backlog(self) -> int:
        """Batches waiting for the export process to read."""
        return len(self._backlog)

    @property
    def running(self) -> bool:
        """The export process is alive."""
        return self._proc.poll() is None

    def ship(self, row: Row) -> None:
        """Queue an ended span's row; it is serialised with its batch (`flush`)."""
        rows = self._rows
        rows.append(row)
        if len(rows) >= FLUSH_SPANS:
            self.flush()
        elif self._timer is None:
            self._arm()

    def _arm(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not on a loop: the next `ship` or `close` sends it
            return
        self._timer = loop.call_later(FLUSH_AFTER_S, self.flush)

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._rows:
            rows, self._rows = self._rows, []
            messages, lost = _messages(rows)
            self.dropped += lost
            self._backlog.extend(messages)
            while len(self._backlog) > MAX_BACKLOG:
                self.dropped += self._backlog.popleft()[1]
        while self._backlog:
            message, spans = self._backlog[0]
            try:
                self._sock.send(message)
            except BlockingIOError:
                self._arm()  # the export process is behind: try again shortly
                return
            except OSError as exc:  # it is gone; what cannot be sent is lost, requests go on
                log.warning("span export channel: %s; dropping %d spans", exc, spans)
                self.dropped += spans
            else:
                self.shipped += spans
            self._backlog.popleft()

    def close(self, timeout_s: float) -> None:
        """Send what is left, end the channel and wait for the export process to flush."""
        self.flush()
        self._sock.settimeout(timeout_s)  # the rest of the backlog may wait for the reader
        with contextlib.suppress(OSError):
            while self._backlog:
                self._sock.send(self._backlog.popleft()[0])
        self._sock.close()
        try:
            self._proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            log.warning("span export process did not finish in %.0f s; killed", timeout_s)
            self._proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(5)


def _messages(rows: list[Row]) -> tuple[list[tuple[bytes, int]], int]:
    """`rows` as messages of at most `MAX_MESSAGE` bytes, each with its span count (usually one
    message, serialised in one call), and how many rows were lost: those with a value JSON
    cannot carry, or too big for any message. A value lost costs its span, not the batch."""
    try:
        whole: bytes | None = orjson.dumps(rows)
    except orjson.JSONEncodeError:
        whole = None
    if whole is not None and len(whole) <= MAX_MESSAGE:
        return [(whole, len(rows))], 0
    messages: list[tuple[bytes, int]] = []
    parts: list[bytes] = []
    size, lost = 2, 0
    for row in rows:
        try:
            data = orjson.dumps(row)
        except orjson.JSONEncodeError:
            lost += 1
            continue
        if len(data) + 2 > MAX_MESSAGE:
            lost += 1
            continue
        if size + len(data) + 1 > MAX_MESSAGE:
            messages.append((b"[" + b",".join(parts) + b"]", len(parts)))
            parts, size = [], 2
        parts.append(data)
        size += len(data) + 1
    if parts:
        messages.append((b"[" + b",".join(parts) + b"]", len(parts)))
    return messages, lost
