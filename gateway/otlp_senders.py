"""Pre-encoded OTLP trace requests sent by the SDK's own exporters' transports.

The OTLP exporters encode `ReadableSpan`s themselves; the span-export process encodes its rows
more cheaply (`gateway.otlp_encoding`) and hands the bytes to the part of the exporter that sends
them, so that endpoint, headers, compression, TLS or `insecure`, retries with backoff and the
timeout stay the SDK's, read from the same `OTEL_EXPORTER_OTLP_*` variables:

- OTLP/HTTP: the exporter's HTTP client (`OTLPSpanExporter._client.export(bytes)`);
- OTLP/gRPC: the exporter's own retry loop (`_export`), whose request-building hook
  (`_translate_data`) returns the bytes, sent on a stub that takes them as they are
  (`gateway.otlp_grpc`).

Both are private to the SDK; `sender_for` answers None when the installed version lacks them, and
the span-export process then uses the exporter as it is.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from engines.otel import OTLP_GRPC, OTLP_HTTP

if TYPE_CHECKING:
    from gateway.otlp_batches import Sender

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 10.0
"""The OTLP exporters' default request timeout (seconds, as the Python SDK reads it)."""


def otlp_timeout_s(env: Mapping[str, str]) -> float:
    """The exporters' timeout (`OTEL_EXPORTER_OTLP_TRACES_TIMEOUT`, else `…_OTLP_TIMEOUT`)."""
    raw = env.get("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT") or env.get("OTEL_EXPORTER_OTLP_TIMEOUT")
    try:
        value = float(raw) if raw else DEFAULT_TIMEOUT_S
    except ValueError:
        return DEFAULT_TIMEOUT_S  # as the SDK (which warns)
    return value if value > 0 else DEFAULT_TIMEOUT_S


class HttpSender:
    """POSTs each request with the OTLP/HTTP exporter's client (endpoint + `/v1/traces`,
    headers, gzip or deflate, retries on 429/502/503/504 and connection errors, all within
    `timeout_s`)."""

    def __init__(self, timeout_s: float) -> None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        self._exporter = OTLPSpanExporter(timeout=timeout_s)
        self._client: Any = getattr(self._exporter, "_client", None)
        if not callable(getattr(self._client, "export", None)):
            raise NotImplementedError("this OTLP/HTTP exporter has no client to send bytes")

    def send(self, request: bytes, spans: int) -> bool:
        return bool(self._client.export(request).success)

    def shutdown(self) -> None:
        self._exporter.shutdown()


def sender_for(name: str, timeout_s: float) -> Sender | None:
    """The sender of exporter `name` (`engines.otel`'s resolved names), or None where requests
    must go through the SDK exporter itself (not OTLP, or an SDK without the hooks)."""
    try:
        if name == OTLP_HTTP:
            return HttpSender(timeout_s)
        if name == OTLP_GRPC:
            from gateway.otlp_grpc import GrpcSender

            return GrpcSender(timeout_s)
    except (NotImplementedError, ImportError, TypeError, AttributeError) as exc:
        log.warning("%s: sending through the SDK exporter (%s)", name, exc)
    return None
