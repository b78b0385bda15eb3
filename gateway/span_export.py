"""The gateway's span-export process: span rows in, the exporters of `OTEL_*` out.

`gateway/span_shipper.py` starts it (`python -m gateway.span_export FD`) with one end of a
socket pair; each message is a JSON array of rows (`gateway.span_records.SpanRecord.row`). The
exporters are the ones the `OTEL_*` environment names (`engines.otel`), with the resource and
batching of an in-process SDK, minus the SDK's cost on the gateway's event loop:

- OTLP (HTTP or gRPC): each row is encoded straight into its protobuf `Span`
  (`gateway.otlp_encoding`, several times cheaper than the SDK's objects; on a busy core this
  process's CPU is the gateway's latency), batched under the `OTEL_BSP_*` bounds
  (`gateway.otlp_batches`) and sent by the SDK exporter's own transport (`gateway.otlp_senders`);
- any other (console, entry points): rows become the SDK's `ReadableSpan`s, through one
  `BatchSpanProcessor` per exporter.

End of input (the gateway closed its end, or died) flushes within `OTEL_BSP_EXPORT_TIMEOUT` and
exits.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import orjson
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

from engines.otel import exporter_names, exporters_from_env, resource_for
from gateway.otlp_batches import BatchExporter, BatchLimits
from gateway.otlp_encoding import SpanEncoder
from gateway.otlp_senders import otlp_timeout_s, sender_for
from gateway.span_records import MAX_MESSAGE

if TYPE_CHECKING:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import SpanProcessor

log = logging.getLogger(__name__)

SERVICE = "dualpath-gateway"
SCOPE = InstrumentationScope("dualpath.gateway")
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_KINDS = {k.value: k for k in SpanKind}
_CODES = {c.value: c for c in StatusCode}


def _value(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value  # JSON arrays were tuples


def readable(row: list[Any], resource: Resource) -> ReadableSpan:
    """The SDK span a row describes (`SpanRecord.row`'s order)."""
    trace, span_id, parent_id, remote, name, kind, start, end, attrs, events, code, msg = row
    trace_id = int(trace, 16)
    parent = SpanContext(trace_id, parent_id, remote, _SAMPLED) if parent_id else None
    return ReadableSpan(
        name,
        context=SpanContext(trace_id, span_id, False, _SAMPLED),
        parent=parent,
        resource=resource,
        attributes={k: _value(v) for k, v in attrs.items()},
        events=[
            Event(e_name, {k: _value(v) for k, v in e_attrs.items()}, e_time)
            for e_name, e_time, e_attrs in events
        ],
        kind=_KINDS.get(kind, SpanKind.INTERNAL),
        status=Status(_CODES.get(code, StatusCode.UNSET), msg or None),
        start_time=start,
        end_time=end,
        instrumentation_scope=SCOPE,
    )


def export_rows(rows: Iterable[list[Any]], resource: Resource, to: list[SpanProcessor]) -> int:
    """Rows to the SDK's processors; how many were not spans (and were skipped)."""
    bad = 0
    for row in rows:
        try:
            span = readable(row, resource)
        except Exception:  # not from our shipper; costs this span, not the others
            bad += 1
            continue
        for processor in to:
            processor.on_end(span)
    return bad


class Exporting:
    """Where rows go: encoded to the OTLP batches, or rebuilt for the SDK's processors."""

    def __init__(self, env: Mapping[str, str]) -> None:
        """The OTLP senders' per-request timeout is the exporters' own, capped by
        `OTEL_BSP_EXPORT_TIMEOUT`; the other exporters keep the SDK's handling of both."""
        self.resource = resource_for(SERVICE)
        names = exporter_names(env)
        limits = BatchLimits.from_env(env)
        timeout_s = min(otlp_timeout_s(env), limits.export_timeout_s)
        self.encoder = SpanEncoder(
            self.resource.attributes, SCOPE.name, SCOPE.version or "", self.resource.schema_url
        )
        self.batches: list[BatchExporter] = []
        rest = []
        for name in names:
            sender = sender_for(name, timeout_s)
            if sender is None:
                rest.append(name)
            else:
                self.batches.append(BatchExporter(sender, self.encoder.request, limits, name))
        others = exporters_from_env({"OTEL_TRACES_EXPORTER": ",".join(rest)}) if rest else []
        self.processors: list[SpanProcessor] = [BatchSpanProcessor(e) for e in others]
        self.bad_rows = 0
        """Rows that described no span (dropped)."""

    def rows(self, rows: list[list[Any]]) -> None:
        bad = 0
        if self.batches:
            spans = []
            for row in rows:
                try:
                    spans.append(self.encoder.span(row))
                except Exception:  # not from our shipper; costs this span, not the others
                    bad += 1
            for batches in self.batches:
                batches.add(spans)
        if self.processors:
            bad = max(bad, export_rows(rows, self.resource, self.processors))
        self.bad_rows += bad

    def close(self) -> None:
        """Flush and stop every exporter, each bounded by `OTEL_BSP_EXPORT_TIMEOUT`."""
        for batches in self.batches:
            batches.close()
        for processor in self.processors:
            processor.shutdown()
        if self.bad_rows:
            log.warning("%d span rows described no span and were dropped", self.bad_rows)


def main(fd: int) -> None:
    # Serving requests comes first: on a busy core this process yields to the gateway.
    os.nice(10)
    # The channel alone ends this process (end of input: flush, exit). A stop signal sent to the
    # gateway's whole process group or cgroup (`dualpath up`, Ctrl-C, systemd) would otherwise
    # kill it before the gateway's shutdown has handed over, and it has flushed, the last spans.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    channel = socket.socket(fileno=fd)
    exporting = Exporting(os.environ)
    try:
        while message := channel.recv(MAX_MESSAGE):
            try:
                rows = orjson.loads(message)
            except orjson.JSONDecodeError:
                continue  # cannot happen from our shipper; never let one message stop the rest
            if isinstance(rows, list):
                exporting.rows(rows)
    finally:
        exporting.close()
        channel.close()


if __name__ == "__main__":
    main(int(sys.argv[1]))
