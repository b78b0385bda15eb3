"""Pre-encoded requests through the SDK exporters' transports (`gateway/otlp_senders.py`,
`gateway/otlp_grpc.py`) to real receivers, and the span-export process end to end."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
import orjson
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from engines.otel import OTLP_GRPC, OTLP_HTTP
from gateway.otlp_encoding import SpanEncoder
from gateway.otlp_senders import otlp_timeout_s, sender_for
from gateway.span_records import Row
from tests.support.otlp_receiver import OtlpReceiver
from tests.support.procs import REPO, free_port


def _rows(n: int) -> list[Row]:
    return [
        [f"{i + 1:032x}", i + 1, 0, False, f"span-{i}", 1, 10, 20, {"i": i, "s": "x"}, [], 0, ""]
        for i in range(n)
    ]


def _request(n: int) -> bytes:
    encoder = SpanEncoder({"service.name": "test"}, "scope")
    return encoder.request([encoder.span(row) for row in _rows(n)])


@pytest.fixture
def otlp_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in [n for n in os.environ if n.startswith("OTEL_")]:
        monkeypatch.delenv(name)
    return monkeypatch


@pytest.mark.parametrize("compression", ["none", "gzip"])
def test_http_posts_the_bytes_to_the_traces_endpoint(
    otlp_env: pytest.MonkeyPatch, compression: str
) -> None:
    with OtlpReceiver() as receiver:
        otlp_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)  # + /v1/traces
        otlp_env.setenv("OTEL_EXPORTER_OTLP_COMPRESSION", compression)
        sender = sender_for(OTLP_HTTP, 5)
        assert sender is not None
        assert sender.send(_request(3), 3)
        sender.shutdown()
        assert sorted(s.name for s in receiver.spans()) == ["span-0", "span-1", "span-2"]
        assert {s.service for s in receiver.spans()} == {"test"}


class _Recorder(BaseHTTPRequestHandler):
    seen: list[tuple[str, dict[str, str], bytes]] = []

    def log_message(self, *_: Any) -> None:
        pass

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        self.seen.append((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()


@pytest.fixture
def recorder() -> Iterator[str]:
    _Recorder.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_http_honours_the_traces_endpoint_and_headers(
    otlp_env: pytest.MonkeyPatch, recorder: str
) -> None:
    otlp_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:1")  # overridden below
    otlp_env.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", recorder + "/custom/path")
    otlp_env.setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-team=alpha,authorization=Bearer%20t")
    sender = sender_for(OTLP_HTTP, 5)
    assert sender is not None and sender.send(_request(1), 1)
    sender.shutdown()
    ((path, headers, body),) = _Recorder.seen
    assert path == "/custom/path" and body == _request(1)
    assert headers["x-team"] == "alpha" and headers["authorization"] == "Bearer t"
    assert headers["content-type"] == "application/x-protobuf"


def test_http_gives_up_within_its_timeout(otlp_env: pytest.MonkeyPatch) -> None:
    with socket.socket() as silent:  # accepts connections (the backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        otlp_env.setenv(
            "OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{silent.getsockname()[1]}"
        )
        sender = sender_for(OTLP_HTTP, 0.5)
        assert sender is not None
        started = time.monotonic()
        assert not sender.send(_request(1), 1)
        assert time.monotonic() - started < 3
        sender.shutdown()


class _TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self.requests: list[ExportTraceServiceRequest] = []
        self.metadata: list[dict[str, str]] = []

    def Export(
        self, request: ExportTraceServiceRequest, context: grpc.ServicerContext
    ) -> ExportTraceServiceResponse:
        self.requests.append(request)
        self.metadata.append(dict(context.invocation_metadata()))  # type: ignore[arg-type]
        return ExportTraceServiceResponse()


@pytest.fixture
def grpc_receiver() -> Iterator[tuple[str, _TraceService]]:
    service = _TraceService()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(service, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"http://127.0.0.1:{port}", service
    server.stop(0)


@pytest.mark.parametrize("compression", [None, "gzip"])  # the gRPC exporter refuses "none"
def test_grpc_sends_the_bytes_as_they_are(
    otlp_env: pytest.MonkeyPatch,
    grpc_receiver: tuple[str, _TraceService],
    compression: str | None,
) -> None:
    endpoint, service = grpc_receiver
    otlp_env.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", endpoint)
    otlp_env.setenv("OTEL_EXPORTER_OTLP_INSECURE", "true")
    otlp_env.setenv("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "x-team=beta")
    if compression:
        otlp_env.setenv("OTEL_EXPORTER_OTLP_COMPRESSION", compression)
    sender = sender_for(OTLP_GRPC, 5)
    assert sender is not None
    assert sender.send(_request(4), 4)
    sender.shutdown()
    (request,) = service.requests
    assert request.SerializeToString() == _request(4)
    assert service.metadata[0]["x-team"] == "beta"


def test_grpc_gives_up_within_its_timeout(otlp_env: pytest.MonkeyPatch) -> None:
    otlp_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{free_port()}")  # nobody
    sender = sender_for(OTLP_GRPC, 0.5)
    assert sender is not None
    started = time.monotonic()
    assert not sender.send(_request(1), 1)
    assert time.monotonic() - started < 3
    sender.shutdown()


def test_other_exporters_have_no_sender() -> None:
    assert sender_for("console", 5) is None


@pytest.mark.parametrize(
    ("env", "timeout"),
    [
        ({}, 10.0),
        ({"OTEL_EXPORTER_OTLP_TIMEOUT": "3"}, 3.0),
        ({"OTEL_EXPORTER_OTLP_TIMEOUT": "3", "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT": "2"}, 2.0),
        ({"OTEL_EXPORTER_OTLP_TIMEOUT": "soon"}, 10.0),
    ],
)
def test_the_exporters_timeout(env: dict[str, str], timeout: float) -> None:
    assert otlp_timeout_s(env) == timeout


def test_the_export_process_encodes_batches_and_flushes_at_end_of_input() -> None:
    """OTLP/HTTP and console at once: the encoded path and the SDK's path see the same rows."""
    with OtlpReceiver() as receiver:
        env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")} | {
            "OTEL_TRACES_EXPORTER": "otlp,console",
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            "OTEL_BSP_SCHEDULE_DELAY": "60000",  # only full batches or the end send anything
            "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "4",
            "OTEL_SERVICE_NAME": "export-test",
        }
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.span_export", str(theirs.fileno())],
            pass_fds=(theirs.fileno(),),
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
        )
        theirs.close()
        rows = _rows(6)
        ours.send(orjson.dumps(rows[:5]))
        ours.send(b"not json")  # skipped, not fatal
        ours.send(orjson.dumps([rows[5], ["not", "a", "span"]]))  # the bad row only is lost
        receiver.wait_for(lambda spans: len(spans) >= 4, timeout=20)  # a full batch went
        proc.send_signal(signal.SIGTERM)  # as a stop of the gateway's process group: no effect
        proc.send_signal(signal.SIGINT)
        ours.close()
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0
        spans = receiver.spans()
        assert sorted(s.name for s in spans) == sorted(f"span-{i}" for i in range(6))
        assert {s.service for s in spans} == {"export-test"}
        assert {s.scope for s in spans} == {"dualpath.gateway"}
        assert out.decode().count('"name": "span-') == 6  # the console exporter's JSON
