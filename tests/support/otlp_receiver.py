"""A real OTLP/HTTP trace receiver: `POST /v1/traces` with protobuf bodies, on loopback.

What a collector does on its first hop, no more: each body (gzip or not) is decoded with
`opentelemetry-proto`'s `ExportTraceServiceRequest`, kept (bounded), and answered with an empty
`ExportTraceServiceResponse`. Tests run it in a thread (`OtlpReceiver`) and wait for spans with a
deadline; the tracing benchmark runs it as its own process:
`python -m tests.support.otlp_receiver --port P` (`GET /_stats` tells what arrived).
"""

from __future__ import annotations

import argparse
import gzip
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
from google.protobuf.json_format import MessageToDict
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

MAX_BODY = 64 << 20
MAX_REQUESTS = 10_000


def _value(v: AnyValue) -> Any:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return tuple(_value(x) for x in v.array_value.values)
    if kind == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in v.kvlist_value.values}
    return getattr(v, kind) if kind else None


@dataclass(frozen=True, slots=True)
class ReceivedSpan:
    service: str
    scope: str
    trace_id: str
    span_id: str
    parent_id: str
    name: str
    kind: int
    """`Span.SpanKind`: 2 server, 3 client, 1 internal."""
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    status_code: int = 0
    """0 unset, 1 ok, 2 error."""
    resource: dict[str, Any] = field(default_factory=dict)


def flatten(request: ExportTraceServiceRequest) -> list[ReceivedSpan]:
    out = []
    for rs in request.resource_spans:
        resource = {a.key: _value(a.value) for a in rs.resource.attributes}
        for ss in rs.scope_spans:
            for s in ss.spans:
                out.append(
                    ReceivedSpan(
                        service=str(resource.get("service.name", "")),
                        scope=ss.scope.name,
                        trace_id=s.trace_id.hex(),
                        span_id=s.span_id.hex(),
                        parent_id=s.parent_span_id.hex(),
                        name=s.name,
                        kind=s.kind,
                        start_ns=s.start_time_unix_nano,
                        end_ns=s.end_time_unix_nano,
                        attributes={a.key: _value(a.value) for a in s.attributes},
                        events=[
                            (e.name, {a.key: _value(a.value) for a in e.attributes})
                            for e in s.events
                        ],
                        status_code=s.status.code,
                        resource=resource,
                    )
                )
    return out


class OtlpReceiver:
    """The receiver on a free loopback port, serving from a daemon thread while in `with`."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, keep: bool = True) -> None:
        self._lock = threading.Condition()
        self._requests: list[ExportTraceServiceRequest] = []
        self._spans: list[ReceivedSpan] = []
        self._keep = keep
        """False: only count what arrives (the benchmark's receiver)."""
        self.posts = 0
        self.span_count = 0
        self._server = ThreadingHTTPServer((host, port), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> OtlpReceiver:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def serve_forever(self) -> None:
        self._server.serve_forever()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            # Keep-alive, as a collector: HTTP/1.0 would make every exporter reconnect per batch.
            protocol_version = "HTTP/1.1"

            def log_message(self, *_: Any) -> None:  # quiet: tests read spans, not logs
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                if self.path != "/v1/traces" or not 0 < length <= MAX_BODY:
                    self.send_error(404 if self.path != "/v1/traces" else 400)
                    return
                body = self.rfile.read(length)
                if self.headers.get("content-encoding") == "gzip":
                    body = gzip.decompress(body)
                request = ExportTraceServiceRequest.FromString(body)
                receiver._add(request)
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def do_GET(self) -> None:
                stats = orjson.dumps({"posts": receiver.posts, "spans": receiver.span_count})
                self.send_response(200 if self.path == "/_stats" else 404)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(stats)))
                self.end_headers()
                self.wfile.write(stats)

        return Handler

    def _add(self, request: ExportTraceServiceRequest) -> None:
        with self._lock:
            self.posts += 1
            self.span_count += sum(len(ss.spans) for rs in request.resource_spans
                                   for ss in rs.scope_spans)  # fmt: skip
            if self._keep and len(self._requests) < MAX_REQUESTS:
                self._requests.append(request)
                self._spans.extend(flatten(request))
            self._lock.notify_all()

    def spans(self) -> list[ReceivedSpan]:
        with self._lock:
            return list(self._spans)

    def otlp_json(self) -> list[dict[str, Any]]:
        """What arrived, as OTLP/JSON-shaped objects (protobuf's JSON mapping)."""
        with self._lock:
            return [MessageToDict(r) for r in self._requests]

    def wait_for(
        self, predicate: Callable[[list[ReceivedSpan]], bool], timeout: float = 30
    ) -> list[ReceivedSpan]:
        """The spans once `predicate(spans)` holds; TimeoutError past `timeout` seconds."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while not predicate(self._spans):
                left = deadline - time.monotonic()
                if left <= 0:
                    names = sorted({s.name for s in self._spans})
                    raise TimeoutError(f"spans not there after {timeout}s; have {names}")
                self._lock.wait(left)
            return list(self._spans)


def by_trace(spans: list[ReceivedSpan]) -> Iterator[list[ReceivedSpan]]:
    traces: dict[str, list[ReceivedSpan]] = {}
    for s in spans:
        traces.setdefault(s.trace_id, []).append(s)
    yield from traces.values()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    args = p.parse_args()
    OtlpReceiver(args.host, args.port, keep=False).serve_forever()


if __name__ == "__main__":
    main()
