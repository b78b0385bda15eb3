"""The gateway's span-export process: span rows in, the SDK's exporters out.

`gateway/span_shipper.py` starts it (`python -m gateway.span_export FD`) with one end of a
socket pair; each message is a JSON array of rows (`gateway.span_records.SpanRecord.row`). Here
they become the SDK's `ReadableSpan`s and go through one `BatchSpanProcessor` per exporter the
`OTEL_*` environment names (`engines.otel`): the same exporters, batching, bounds and resource
as an in-process SDK, minus the SDK's cost on the gateway's event loop. End of input (the gateway
closed its end, or died) flushes within `OTEL_BSP_EXPORT_TIMEOUT` and exits.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import orjson
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

from engines.otel import exporters_from_env, resource_for
from gateway.span_records import MAX_MESSAGE

if TYPE_CHECKING:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import SpanProcessor

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


def export_rows(rows: Iterable[list[Any]], resource: Resource, to: list[SpanProcessor]) -> None:
    for row in rows:
        span = readable(row, resource)
        for processor in to:
            processor.on_end(span)


def main(fd: int) -> None:
    # Serving requests comes first: on a busy core this process yields to the gateway.
    os.nice(10)
    channel = socket.socket(fileno=fd)
    resource = resource_for(SERVICE)
    processors: list[SpanProcessor] = [BatchSpanProcessor(e) for e in exporters_from_env()]
    try:
        while message := channel.recv(MAX_MESSAGE):
            try:
                rows = orjson.loads(message)
            except orjson.JSONDecodeError:
                continue  # cannot happen from our shipper; never let one message stop the rest
            export_rows(rows, resource, processors)
    finally:
        for processor in processors:
            processor.shutdown()  # flushes, bounded by OTEL_BSP_EXPORT_TIMEOUT
        channel.close()


if __name__ == "__main__":
    main(int(sys.argv[1]))
