"""Tracing's switch (the `OTEL_*` environment), its cost when off, and what a request's spans
say, in process: the spans go to the SDK's in-memory exporter through a real provider."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator

import orjson
import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from starlette.responses import Response

from engines.otel import OTLP_GRPC, OTLP_HTTP, TracingConfigError, exporter_names
from engines.worker_registry import Worker
from gateway.errors import Overloaded
from gateway.pd_dispatch import Completed
from gateway.placement import PDPair
from gateway.relay_response import RelayResponse
from gateway.request_parsing import ParsedRequest
from gateway.scheduler.decision import Decision
from gateway.scheduler.request import SchedRequest
from gateway.span_export import readable
from gateway.span_records import Row, Sampler, Tracer
from gateway.trace_answer import MAX_CONTENT_CHARS
from gateway.tracing import Tracing
from tests.support.procs import REPO

SECRET = "violet-anchor-5521"
USAGE = {"prompt_tokens": 9, "completion_tokens": 3, "prompt_tokens_details": {"cached_tokens": 4}}


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({}, []),
        ({"OTEL_TRACES_EXPORTER": "none"}, []),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, [OTLP_HTTP]),  # the specification's default protocol
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, [OTLP_GRPC]),
        (
            {
                "OTEL_TRACES_EXPORTER": "otlp",
                "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",
            },
            [OTLP_HTTP],
        ),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, [OTLP_HTTP]),
        ({"OTEL_TRACES_EXPORTER": "console,otlp_proto_grpc"}, ["console", OTLP_GRPC]),
        ({"OTEL_TRACES_EXPORTER": "console", "OTEL_SDK_DISABLED": "true"}, []),
    ],
)
def test_the_environment_decides(env: dict[str, str], names: list[str]) -> None:
    assert exporter_names(env) == names


def test_an_unknown_exporter_stops_the_gateways_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "zipkin_typo")
    with pytest.raises(TracingConfigError, match="unknown trace exporter 'zipkin_typo'"):
        Tracing.from_env()


def test_an_unknown_protocol_stops_the_start() -> None:
    with pytest.raises(TracingConfigError, match="http/protobuf or grpc"):
        exporter_names({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "json"})


_PROBE = """
import json, sys
from fastapi.testclient import TestClient
from opentelemetry import trace
from gateway.app import create_app
from gateway.settings import load_settings

with TestClient(create_app(load_settings(env={}))) as client:
    tracing = client.app.state.gateway.tracing
    print(json.dumps({
        "tracing": tracing is not None,
        "provider": type(trace.get_tracer_provider()).__name__,
        "sdk_loaded": "opentelemetry.sdk.trace" in sys.modules,
        "exporting": tracing is not None and tracing.shipper.running,
    }))
"""


def _probe(extra: dict[str, str]) -> dict[str, object]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")} | extra
    done = subprocess.run(
        [sys.executable, "-c", _PROBE], cwd=REPO, env=env, capture_output=True, timeout=60
    )
    assert done.returncode == 0, done.stderr.decode()
    result: dict[str, object] = json.loads(done.stdout.decode().splitlines()[-1])
    return result


def test_off_by_default_installs_nothing() -> None:
    off = _probe({})
    assert off == {
        "tracing": False,
        "provider": "ProxyTracerProvider",
        "sdk_loaded": False,
        "exporting": False,
    }
    on = _probe({"OTEL_TRACES_EXPORTER": "console"})
    # On, the SDK works in the span-export process: the gateway's own stays free of it, and
    # the process-wide provider is left alone.
    assert on == {**off, "tracing": True, "exporting": True}


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


def _tracing(exporter: InMemorySpanExporter, content: bool) -> Tracing:
    """The gateway's records, rebuilt into SDK spans as the export process rebuilds them."""
    resource = Resource.create({})

    def ship(row: Row) -> None:
        exporter.export([readable(orjson.loads(orjson.dumps(row)), resource)])

    return Tracing(Tracer(Sampler(), ship), content)


def _parsed(stream: bool) -> ParsedRequest:
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": f"{SECRET} please"}],
        "max_tokens": 5,
        "temperature": 0.5,
        "stream": stream,
    }
    return ParsedRequest("/v1/chat/completions", body, "m", stream, False, 1)


def _answer() -> bytes:
    choice = {"index": 0, "message": {"content": "the ANSWER"}, "finish_reason": "stop"}
    return orjson.dumps({"choices": [choice], "usage": USAGE})


def _everything(spans: tuple[ReadableSpan, ...]) -> str:
    rows = [
        [s.name, dict(s.attributes or {}), [(e.name, dict(e.attributes or {})) for e in s.events]]
        for s in spans
    ]
    return json.dumps(rows, default=str)


def _root(spans: tuple[ReadableSpan, ...]) -> ReadableSpan:
    (root,) = [s for s in spans if s.name == "chat.completions"]
    return root


@pytest.mark.parametrize("content", [False, True])
def test_a_whole_answer(exporter: InMemorySpanExporter, content: bool) -> None:
    trace = _tracing(exporter, content).request("/v1/chat/completions", {"x-request-id": "a:3"})
    trace.stage("session.identify")
    trace.session(_parsed(False), None)
    trace.end(Completed(USAGE, None, time.monotonic()))  # the dispatcher ends before returning
    assert not [s for s in exporter.get_finished_spans() if s.name == "chat.completions"]
    trace.response(Response(_answer(), media_type="application/json"))
    spans = exporter.get_finished_spans()
    root = _root(spans)
    a = dict(root.attributes or {})
    assert a["gen_ai.request.max_tokens"] == 5 and a["gen_ai.request.temperature"] == 0.5
    assert a["gen_ai.usage.input_tokens"] == 9 and a["gen_ai.usage.output_tokens"] == 3
    assert a["gen_ai.usage.cache_read.input_tokens"] == 4
    assert a["gen_ai.response.finish_reasons"] == ("stop",)
    assert a["dualpath.request_id"] == "a:3" and "dualpath.ttft_s" not in a
    assert {s.name for s in spans} == {"chat.completions", "session.identify"}
    if not content:
        assert SECRET not in _everything(spans) and "ANSWER" not in _everything(spans)
        assert not root.events
        return
    events = {e.name: dict(e.attributes or {}) for e in root.events}
    assert SECRET in str(events["gen_ai.content.prompt"]["gen_ai.prompt"])
    assert events["gen_ai.content.completion"]["gen_ai.completion"] == "the ANSWER"


async def _stream() -> AsyncIterator[bytes]:
    for text in ("the ", "long ", "ANSWER" * MAX_CONTENT_CHARS):
        delta = {"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}
        yield b"data: " + orjson.dumps(delta) + b"\n\n"
    end = {"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]}
    yield b"data: " + orjson.dumps(end) + b"\n\ndata: [DONE]\n\n"


async def test_a_stream_with_content(exporter: InMemorySpanExporter) -> None:
    trace = _tracing(exporter, True).request("/v1/chat/completions", {})
    trace.session(_parsed(True), None)
    relay = trace.response(RelayResponse(_stream(), {}))
    assert isinstance(relay, RelayResponse)
    started = time.monotonic()
    chunks = [c async for c in relay.chunks]
    assert chunks[-1].endswith(b"[DONE]\n\n")
    trace.end(Completed(USAGE, started + 0.25, started + 0.75))
    root = _root(exporter.get_finished_spans())
    a = dict(root.attributes or {})
    assert a["gen_ai.response.finish_reasons"] == ("length",)
    assert a["dualpath.ttft_s"] > 0.2 and a["dualpath.tpot_s"] == pytest.approx(0.25)
    (completion,) = [e for e in root.events if e.name == "gen_ai.content.completion"]
    text = str((completion.attributes or {})["gen_ai.completion"])
    assert text.startswith("the long ANSWER") and len(text) == MAX_CONTENT_CHARS + 1  # cut


async def test_a_stream_cut_short_is_an_error(exporter: InMemorySpanExporter) -> None:
    trace = _tracing(exporter, False).request("/v1/chat/completions", {})
    trace.response(RelayResponse(_stream(), {}))
    trace.end(None)
    root = _root(exporter.get_finished_spans())
    assert root.status.status_code is StatusCode.ERROR
    assert (root.attributes or {})["error.type"] == "stream_aborted"


def _choice_events(reasons: list[str | None]) -> bytes:
    events = []
    for index, reason in enumerate(reasons):
        choice = {"index": index, "delta": {"content": "x"}, "finish_reason": reason}
        events.append(b"data: " + orjson.dumps({"choices": [choice]}) + b"\n\n")
    return b"".join(events)


@pytest.mark.parametrize(
    ("n", "chunks", "reasons"),
    [
        (1, [_choice_events([None]), _choice_events([None, None, "stop"])], ("stop",)),
        (1, [_choice_events(["length"]) + b'data: {"choices":[],"usage":{}}\n\n'], ("length",)),
        (2, [_choice_events(["length", None]), _choice_events([None, "stop"])], ("length", "stop")),
    ],
)
def test_the_dispatchers_relay_shows_each_chunk(
    exporter: InMemorySpanExporter, n: int, chunks: list[bytes], reasons: tuple[str, ...]
) -> None:
    """A stream relayed by the dispatcher is read in its own loop (`watcher`), not wrapped."""
    trace = _tracing(exporter, False).request("/v1/chat/completions", {})
    parsed = _parsed(True)
    trace.session(ParsedRequest(parsed.path, {**parsed.body, "n": n}, "m", True, False, n), None)
    watch = trace.watcher()
    assert watch is not None
    relay = RelayResponse(_stream(), {})
    original = relay.chunks
    assert trace.response(relay).chunks is original  # type: ignore[attr-defined]
    for chunk in chunks:
        watch(chunk)
    trace.end(Completed(USAGE, time.monotonic(), time.monotonic()))
    assert (_root(exporter.get_finished_spans()).attributes or {})[
        "gen_ai.response.finish_reasons"
    ] == reasons


def test_an_unsampled_request_builds_nothing_and_says_so_upstream() -> None:
    shipped: list[Row] = []
    trace = Tracing(Tracer(Sampler("always_off"), shipped.append)).request("/v1/completions", {})
    assert not trace.sampled and trace.watcher() is None
    trace.stage("schedule")
    wanted = SchedRequest("r", 0, 10, 5, 0.0, 4.0, 0.05)
    pair = PDPair(Worker("http://p:1", "prefill"), Worker("http://d:2", "decode"))
    trace.scheduled(Decision("r", "p", "d", 1.0, 0.1, 0.02, "basic", "", 0.0, 0.0), pair, wanted)
    prefill, decode = trace.legs(pair, {"x-request-id": "a"})
    assert prefill == decode and prefill["x-request-id"] == "a"
    assert prefill["traceparent"].startswith("00-") and prefill["traceparent"].endswith("-00")
    answer = Response(_answer(), media_type="application/json")
    assert trace.response(answer) is answer
    trace.end(Completed(USAGE, None, time.monotonic()))
    trace.fail(Overloaded("the gateway is overloaded", retry_after_s=2))
    assert not shipped


def test_a_shed_request(exporter: InMemorySpanExporter) -> None:
    trace = _tracing(exporter, False).request("/v1/completions", {})
    trace.stage("schedule")
    trace.fail(Overloaded("the gateway is overloaded", retry_after_s=2))
    spans = {s.name: s for s in exporter.get_finished_spans()}
    root, schedule = spans["completions"], spans["schedule"]
    assert schedule.parent is not None and schedule.parent.span_id == root.context.span_id
    for span in (root, schedule):
        assert span.status.status_code is StatusCode.ERROR
        assert (span.attributes or {})["error.type"] == "overloaded"
    assert (root.attributes or {})["http.response.status_code"] == 429
    assert (root.attributes or {})["gen_ai.operation.name"] == "text_completion"


async def test_a_retried_request_is_one_tree_with_each_tries_legs(
    exporter: InMemorySpanExporter,
) -> None:
    """A try that fails before its first byte ends its legs in error; the retry's legs and the
    answer belong to the same request span, which counts the attempts."""
    trace = _tracing(exporter, False).request("/v1/chat/completions", {})
    wanted = SchedRequest("r", 0, 10, 5, 0.0, 4.0, 0.05)
    for attempt, (prefill, decode) in enumerate([("p0", "d0"), ("p1", "d1")]):
        pair = PDPair(
            Worker(f"http://{prefill}:1", "prefill"), Worker(f"http://{decode}:2", "decode")
        )
        decision = Decision("r", prefill, decode, 1.0, 0.1, 0.02, "basic", "", 0.0, 0.0)
        trace.stage("schedule")
        trace.scheduled(decision, pair, wanted)
        trace.legs(pair, {})
        task = asyncio.get_running_loop().create_future()
        if attempt == 0:
            task.set_exception(ConnectionError("refused"))
            trace.prefill_done(task)  # type: ignore[arg-type]
            trace.end(None)  # the dispatcher gives up on this try; the route retries
        else:
            task.set_result(None)
            trace.prefill_done(task)  # type: ignore[arg-type]
    trace.end(Completed(USAGE, None, time.monotonic()))
    trace.response(Response(_answer(), media_type="application/json"))
    spans = exporter.get_finished_spans()
    root = _root(spans)
    assert (root.attributes or {})["dualpath.attempts"] == 2
    assert root.status.status_code is not StatusCode.ERROR
    legs = [s for s in spans if s.name in ("prefill", "decode")]
    assert sorted((s.name, (s.attributes or {})["server.address"]) for s in legs) == [
        ("decode", "d0"),
        ("decode", "d1"),
        ("prefill", "p0"),
        ("prefill", "p1"),
    ]
    failed = {s.name for s in legs if s.status.status_code is StatusCode.ERROR}
    assert failed == {"prefill", "decode"} and all(
        s.parent is not None and s.parent.span_id == root.context.span_id for s in legs
    )
    first = [s for s in legs if (s.attributes or {})["server.address"] in ("p0", "d0")]
    assert all(s.status.status_code is StatusCode.ERROR for s in first)


@pytest.fixture(autouse=True)
def _no_leftovers() -> Iterator[None]:
    yield
    # Nothing here installs a process-wide provider (the app owns its own).
    from opentelemetry import trace

    assert not isinstance(trace.get_tracer_provider(), TracerProvider)
