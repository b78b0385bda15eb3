"""Encoded spans batched into OTLP requests and sent on a thread of their own.

The `BatchSpanProcessor`'s contract, for spans that are already `Span` fields
(`gateway.otlp_encoding`): a queue bounded by `OTEL_BSP_MAX_QUEUE_SIZE` that drops its oldest
spans when full (and counts them), a send every `OTEL_BSP_SCHEDULE_DELAY` or as soon as
`OTEL_BSP_MAX_EXPORT_BATCH_SIZE` spans wait, at most that many per request, and a last flush at
`close` bounded by `OTEL_BSP_EXPORT_TIMEOUT`. The sending itself is a `Sender`'s
(`gateway.otlp_senders`): its endpoint, retries and per-request timeout.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

log = logging.getLogger(__name__)


class Sender(Protocol):
    def send(self, request: bytes, spans: int) -> bool:
        """Deliver one `ExportTraceServiceRequest` (within the sender's timeout); whether it
        was accepted."""
        ...

    def shutdown(self) -> None:
        """Stop: abandon retries in progress, close connections."""
        ...


def _env_number(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    try:
        value = float(raw) if raw else default
    except ValueError:
        log.warning("%s=%r is not a number; using %g", name, raw, default)
        return default
    if value <= 0:
        log.warning("%s=%r is not positive; using %g", name, raw, default)
        return default
    return value


@dataclass(frozen=True, slots=True)
class BatchLimits:
    """The SDK's batch processor's settings and defaults (`OTEL_BSP_*`)."""

    schedule_delay_s: float = 5.0
    """Longest a span waits before its batch is sent (`OTEL_BSP_SCHEDULE_DELAY`, ms)."""
    max_batch: int = 512
    """Most spans in one request (`OTEL_BSP_MAX_EXPORT_BATCH_SIZE`)."""
    max_queue: int = 2048
    """Most spans waiting; beyond, the oldest are dropped (`OTEL_BSP_MAX_QUEUE_SIZE`)."""
    export_timeout_s: float = 30.0
    """Longest one request may take, and the last flush (`OTEL_BSP_EXPORT_TIMEOUT`, ms)."""

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> BatchLimits:
        """Unusable values fall back to the defaults (with a warning), as in the SDK; a batch
        larger than the queue is cut to the queue."""
        d = cls()
        delay_ms = _env_number(env, "OTEL_BSP_SCHEDULE_DELAY", 1000 * d.schedule_delay_s)
        queue = int(_env_number(env, "OTEL_BSP_MAX_QUEUE_SIZE", d.max_queue))
        batch = int(_env_number(env, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", d.max_batch))
        timeout_ms = _env_number(env, "OTEL_BSP_EXPORT_TIMEOUT", 1000 * d.export_timeout_s)
        return cls(delay_ms / 1000, max(1, min(batch, queue)), max(1, queue), timeout_ms / 1000)


class BatchExporter:
    """`add` runs on the caller's thread (never blocks); sending on this one's thread."""

    def __init__(
        self,
        sender: Sender,
        request: Callable[[Sequence[bytes]], bytes],
        limits: BatchLimits,
        name: str = "otlp",
    ) -> None:
        self._sender = sender
        self._request = request
        self._limits = limits
        self._name = name
        self._queue: collections.deque[bytes] = collections.deque(maxlen=limits.max_queue)
        self._wake = threading.Event()
        self._closing = False
        self._stop_sending = False
        self.dropped = 0
        """Spans dropped because the queue was full."""
        self.failed = 0
        """Spans in requests the sender gave up on."""
        self.sent = 0
        self._thread = threading.Thread(target=self._run, name=f"span-batches-{name}", daemon=True)
        self._thread.start()

    def add(self, spans: Sequence[bytes]) -> None:
        queue, limits = self._queue, self._limits
        overflow = len(queue) + len(spans) - limits.max_queue
        if overflow > 0:  # the deque drops the oldest itself; count them
            if not self.dropped:
                log.warning("%s span queue full (%d); dropping the oldest", self._name, len(queue))
            self.dropped += overflow
        queue.extend(spans)
        if len(queue) >= limits.max_batch and not self._wake.is_set():
            self._wake.set()

    def close(self) -> None:
        """Send what waits, within `export_timeout_s`, then stop the sender."""
        self._closing = True
        self._wake.set()
        self._thread.join(self._limits.export_timeout_s)
        self._stop_sending = True
        self._sender.shutdown()
        left = len(self._queue)
        if self.dropped or self.failed or left:
            log.warning(
                "%s spans: %d sent, %d dropped (queue full), %d failed, %d unsent at exit",
                self._name,
                self.sent,
                self.dropped,
                self.failed,
                left,
            )

    def _run(self) -> None:
        while not self._closing:
            woken = self._wake.wait(self._limits.schedule_delay_s)
            self._wake.clear()
            if self._closing:
                break
            self._send(everything=False, at_least_one=not woken)
        self._send(everything=True, at_least_one=True)

    def _send(self, everything: bool, at_least_one: bool) -> None:
        """Full batches; also a partial one after the delay, and all at the end."""
        queue, most = self._queue, self._limits.max_batch
        while queue and not self._stop_sending:
            if not (everything or at_least_one or len(queue) >= most):
                return
            at_least_one = False
            batch = []
            for _ in range(min(most, len(queue))):
                batch.append(queue.popleft())
            self._deliver(batch)

    def _deliver(self, batch: list[bytes]) -> None:
        try:
            ok = self._sender.send(self._request(batch), len(batch))
        except Exception:  # a sender's bug must not end the thread and its later batches
            log.exception("%s span export failed", self._name)
            ok = False
        if ok:
            self.sent += len(batch)
        else:
            self.failed += len(batch)  # the sender logged why
