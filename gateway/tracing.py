"""Traces of the gateway's requests (OpenTelemetry): the switch, the tracer and its exporting.

Off by default (`engines.otel`: on when `OTEL_TRACES_EXPORTER` or an OTLP endpoint is set). Off,
`Tracing.from_env` returns None, no SDK provider exists and the routes take their untraced path:
no span, no attribute is built. On, each request is one tree:

    chat.completions | completions   SERVER  GenAI attributes + ours (`dualpath.*`), TTFT/TPOT
    ├── session.identify                     how the session was found, its estimated hit
    ├── kv.lookup                            the hit probe: estimated vs confirmed hit tokens
    ├── schedule                             queue wait (held time), the decision and why
    ├── prefill                      CLIENT  the prefill leg; its `traceparent` goes upstream
    └── decode                       CLIENT  the decode leg (the relayed stream), likewise

The client's own `traceparent` is honoured (the request span is its child), and each leg sends
its span's `traceparent` to its worker, whose spans continue the trace
(`engines/sim_worker/tracing.py`). Prompt and completion text are never recorded unless
`DUALPATH_TRACE_CONTENT` is on; then they go in span events, cut at `MAX_CONTENT_CHARS`.

A request's spans are filled by its `RequestTrace` (`gateway/request_trace.py`) as plain records
(`gateway/span_records.py`), and exported in a process of their own (`gateway/span_export.py`:
encoded straight to OTLP, or through the SDK for its other exporters): the gateway itself never
imports the SDK.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from engines.otel import TracingConfigError, check_exporters, exporter_names
from gateway.request_trace import SPAN_NAMES, RequestTrace, SampledTrace, UnsampledTrace
from gateway.span_records import (
    SERVER,
    Sampler,
    SpanRecord,
    Tracer,
    unsampled_traceparent,
)

if TYPE_CHECKING:
    from gateway.span_shipper import SpanShipper

_MAX_SERVERS = 4096


class Tracing:
    """The gateway's tracer and its span-export process, owned by the app's lifespan."""

    def __init__(
        self, tracer: Tracer, content: bool = False, shipper: SpanShipper | None = None
    ) -> None:
        self.tracer = tracer
        self.content = content
        """Record prompt and completion text in span events."""
        self.shipper = shipper
        self._servers: dict[str, dict[str, Any]] = {}

    @classmethod
    def from_env(cls, content: bool = False) -> Tracing | None:
        """Tracing as the `OTEL_*` environment asks (exporters, sampler); None when it is off.
        A setting that cannot work stops the start (`TracingConfigError`)."""
        names = exporter_names(os.environ)
        if not names:
            return None
        check_exporters(names)  # the export process would only find out once running
        try:
            sampler = Sampler.from_env()
        except ValueError as exc:
            raise TracingConfigError(str(exc)) from None
        from gateway.span_shipper import SpanShipper

        shipper = SpanShipper()
        return cls(Tracer(sampler, shipper.ship), content, shipper)

    def request(self, path: str, headers: Mapping[str, str]) -> RequestTrace:
        """A request's trace, sampled or not as the sampler decides (on the client's trace,
        when it sent a `traceparent`)."""
        # `in` first: a missing key makes starlette's `Headers.get` raise and catch KeyError.
        parent = headers["traceparent"] if "traceparent" in headers else None  # noqa: SIM401
        # The client's trace, if it sent one.
        trace_id, parent_id, sampled = self.tracer.sample(parent)
        if not sampled:  # no span at all: only the workers need to know
            return UnsampledTrace(unsampled_traceparent(trace_id))
        name = SPAN_NAMES.get(path, path)
        span = SpanRecord(name, trace_id, parent_id, SERVER, None, True, parent_id != 0)
        return SampledTrace(self, span, path, headers)

    def server(self, url: str) -> dict[str, Any]:
        """A worker's `server.*` attributes (the caller's own copy), parsed once per worker
        (bounded by the registry)."""
        attrs = self._servers.get(url)
        if attrs is None:
            where = urlsplit(url)
            attrs = {"server.address": where.hostname or url}
            if where.port is not None:
                attrs["server.port"] = where.port
            if len(self._servers) < _MAX_SERVERS:
                self._servers[url] = attrs
        return attrs.copy()

    def shutdown(self) -> None:
        """Flush what is queued (bounded by `OTEL_BSP_EXPORT_TIMEOUT`) and stop exporting."""
        if self.shipper is not None:
            try:
                timeout_ms = float(os.environ.get("OTEL_BSP_EXPORT_TIMEOUT") or 30_000)
            except ValueError:
                timeout_ms = 30_000  # the SDK's default, which the export process falls back to
            self.shipper.close(timeout_ms / 1000 + 5)
