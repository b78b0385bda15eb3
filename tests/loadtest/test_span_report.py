"""Spans → the report's samples and stage times: both OTLP/JSON encodings, one object or lines.

The spans are built as protobuf messages (what an exporter sends) and written the two ways a
file may hold them: protobuf's JSON mapping (`MessageToDict`: base64 ids, enum names) and the
OTLP/JSON specification's (hex ids, integer enums). End-to-end spans from a real gateway are in
`tests/gateway/test_tracing_up.py`.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.json_format import MessageToDict
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status
from typer.testing import CliRunner

from gateway.cli import app
from loadtest.metrics import SLO, summarize
from loadtest.span_report import (
    SpanFileError,
    dedupe,
    parse_exports,
    read_spans,
    samples_of,
    spans_of,
    stage_stats,
)

T0 = 1_800_000_000 * 10**9  # ns
KINDS = {
    "chat.completions": Span.SPAN_KIND_SERVER,
    "sim_worker.prefill": Span.SPAN_KIND_SERVER,
    "decode": Span.SPAN_KIND_CLIENT,
}
MS = 10**6


def _attr(key: str, value: Any) -> KeyValue:
    if isinstance(value, bool):
        v = AnyValue(bool_value=value)
    elif isinstance(value, int):
        v = AnyValue(int_value=value)
    elif isinstance(value, float):
        v = AnyValue(double_value=value)
    elif isinstance(value, tuple):
        v = AnyValue()
        v.array_value.values.extend(AnyValue(string_value=x) for x in value)
    else:
        v = AnyValue(string_value=value)
    return KeyValue(key=key, value=v)


def _span(
    trace: int, sid: int, parent: int, name: str, start_ms: float, end_ms: float, **attrs: Any
) -> Span:
    error = attrs.pop("error", None)
    span = Span(
        trace_id=trace.to_bytes(16, "big"),
        span_id=sid.to_bytes(8, "big"),
        parent_span_id=parent.to_bytes(8, "big") if parent else b"",
        name=name,
        kind=KINDS.get(name, Span.SPAN_KIND_INTERNAL),
        start_time_unix_nano=T0 + int(start_ms * MS),
        end_time_unix_nano=T0 + int(end_ms * MS),
        attributes=[_attr(k.replace("__", "."), v) for k, v in attrs.items()],
    )
    if error:
        span.status.CopyFrom(Status(code=Status.STATUS_CODE_ERROR, message=error))
    return span


def _request(trace: int, start_ms: float, end_ms: float, **attrs: Any) -> list[Span]:
    root = trace * 100
    base = {"gen_ai.operation.name": "chat", **{k.replace("__", "."): v for k, v in attrs.items()}}
    spans = [_span(trace, root, 0, "chat.completions", start_ms, end_ms, **base)]
    if "error.type" not in base:
        spans += [
            _span(trace, root + 1, root, "schedule", start_ms + 1, start_ms + 3),
            _span(trace, root + 2, root, "decode", start_ms + 4, end_ms),
        ]
    return spans


def _export(gateway: list[Span], worker: list[Span]) -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    for service, spans in (("dualpath-gateway", gateway), ("dualpath-sim-worker", worker)):
        rs = request.resource_spans.add()
        rs.resource.attributes.append(_attr("service.name", service))
        rs.scope_spans.add().spans.extend(spans)
    return request


def _fixture() -> ExportTraceServiceRequest:
    ok = {
        "gen_ai.usage.input_tokens": 1000,
        "gen_ai.usage.output_tokens": 11,
        "gen_ai.usage.cache_read.input_tokens": 960,
        "dualpath.queue_wait_s": 0.002,
    }
    streamed = {"dualpath.request_id": "agent-7:4", "dualpath.ttft_s": 0.02}
    shed = {"error.type": "overloaded", "error": "shed: busy", "dualpath.session.id": "s-9"}
    gateway = [
        *_request(1, 0, 120, **ok, **streamed, **{"dualpath.read_path": "de"}),
        *_request(2, 10, 40, **ok, **{"dualpath.session.id": "s-9", "dualpath.read_path": "pe"}),
        *_request(3, 50, 51, **shed),
    ]
    worker = [
        _span(1, 7, 102, "sim_worker.prefill", 5, 30, **{"dualpath.role": "prefill"}),
        _span(1, 8, 7, "prefill.compute", 6, 16),
    ]
    return _export(gateway, worker)


def _spec_encoding(obj: Any) -> Any:
    """protobuf's JSON mapping → the OTLP/JSON specification's: hex ids, integer enums."""
    if isinstance(obj, list):
        return [_spec_encoding(x) for x in obj]
    if not isinstance(obj, dict):
        return obj
    out = {}
    for key, value in obj.items():
        if key in ("traceId", "spanId", "parentSpanId"):
            value = base64.b64decode(value).hex()
        elif key == "kind":
            value = {"SPAN_KIND_INTERNAL": 1, "SPAN_KIND_SERVER": 2, "SPAN_KIND_CLIENT": 3}[value]
        elif key == "code":
            value = 2
        out[key] = _spec_encoding(value)
    return out


@pytest.fixture(params=["protobuf-json-lines", "spec-object"])
def spans_file(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    as_dict = MessageToDict(_fixture())
    path = tmp_path / "spans.json"
    if request.param == "spec-object":
        path.write_text(json.dumps(_spec_encoding(as_dict)))
    else:  # the collector's file exporter: one export per line (here the same one twice)
        path.write_text(json.dumps(as_dict) + "\n\n" + json.dumps(as_dict) + "\n")
    return path


def test_samples(spans_file: Path) -> None:
    spans = read_spans(spans_file)
    assert len(spans) == 9  # the repeated export counts once
    first, second, shed = samples_of(spans)
    assert (first.agent, first.turn) == ("agent-7", 4)
    assert first.ttft_s == pytest.approx(0.02) and first.e2e_s == pytest.approx(0.12)
    assert first.tpot_s == pytest.approx(0.1 / 10)
    assert (first.prompt_tokens, first.output_tokens, first.cached_tokens) == (1000, 11, 960)
    assert first.read_path == "de" and first.ok
    assert (second.agent, second.turn, second.read_path) == ("s-9", 0, "pe")
    assert second.ttft_s is None and second.ok  # not streamed: no first token seen
    assert (shed.agent, shed.turn) == ("s-9", 1)
    assert shed.error == "overloaded: shed: busy" and not shed.ok
    summary = summarize([first, second, shed], SLO())
    assert (summary["completed"], summary["errors"]) == (2, 1)
    assert summary["read_path_share"] == {"de": 0.5, "pe": 0.5}


def test_stage_times(spans_file: Path) -> None:
    stages = {(s.service, s.name): s for s in stage_stats(read_spans(spans_file))}
    gw = "dualpath-gateway"
    assert stages[(gw, "schedule")].count == 2
    assert stages[(gw, "schedule")].p50_s == pytest.approx(0.002)
    assert stages[(gw, "decode")].max_s == pytest.approx(0.116)
    assert stages[(gw, "queue.wait")].mean_s == pytest.approx(0.002)
    assert stages[(gw, "gateway.before_dispatch")].p50_s == pytest.approx(0.004)
    compute = stages[("dualpath-sim-worker", "prefill.compute")]
    assert (compute.count, compute.p50_s) == (1, pytest.approx(0.01))
    assert ("dualpath-sim-worker", "sim_worker.prefill") in stages


def test_the_command(spans_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    result = CliRunner().invoke(
        app, ["report", "--spans", str(spans_file), "--out", str(out), "--json"]
    )
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    assert body["summary"]["requests"] == 3 and body["spans"] == 9
    assert (out / "index.html").is_file() and (out / "read_paths.png").is_file()
    page = (out / "index.html").read_text()
    assert "dualpath-gateway/schedule" in page and "request spans" in page


def test_bad_input(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"resourceSpans": []}\nnot json\n')
    with pytest.raises(SpanFileError, match=r"bad.jsonl:2"):
        read_spans(bad)
    wrong = tmp_path / "wrong.json"
    span = {"startTimeUnixNano": "x"}
    wrong.write_text(json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [span]}]}]}))
    with pytest.raises(SpanFileError, match="not OTLP/JSON"):
        read_spans(wrong)
    empty = tmp_path / "empty.json"
    empty.write_text('{"resourceSpans": []}')
    result = CliRunner().invoke(app, ["report", "--spans", str(empty)])
    assert result.exit_code == 2 and "no gateway request span" in result.output


def test_arrays_and_duplicates() -> None:
    as_dict = MessageToDict(_fixture())
    exports = parse_exports(json.dumps([as_dict, as_dict]).encode())
    spans = [s for e in exports for s in spans_of(e)]
    assert len(spans) == 18 and len(dedupe(spans)) == 9
