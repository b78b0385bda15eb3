"""Exported spans → the load-test report's samples: so dashboards built on traces and
`dualpath replay`'s reports tell the same story. Pure: no I/O but `read_spans`.

Input is OTLP/JSON: one `{"resourceSpans": [{"resource": …, "scopeSpans": [{"scope": …,
"spans": [...]}]}]}` object, a JSON array of them, or JSON lines of them (what the collector's
`file` exporter writes). Both the specification's encoding (hex ids, integer enums) and
protobuf's generic JSON mapping (`MessageToDict`: base64 ids, enum names) are read, with
camelCase or snake_case field names.

Each gateway request span (`chat.completions`, `completions`: `gateway/tracing.py`) is one
`RequestSample`: sent at the span's start (the gateway's receipt), first token at
`+ dualpath.ttft_s` (streams only), ended at the span's end, tokens from `gen_ai.usage.*`, read
path from `dualpath.read_path`; agent and turn from `dualpath.request_id` when it is
`agent:turn` (as the replay client sends `x-request-id`), else the session. Every other span is a
stage: its durations per (service, name) are the per-stage times, plus two derived from the
request span: `queue.wait` (`dualpath.queue_wait_s`) and `gateway.before_dispatch` (request start
→ decode leg start: parsing, session, KV look-up, scheduling and queueing).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from loadtest.errors import LoadtestError
from loadtest.metrics import RequestSample, percentile

REQUEST_SPANS = ("chat.completions", "completions")
GATEWAY_SERVICE = "dualpath-gateway"
CLIENT = 3
ERROR = 2
_KINDS = {"SPAN_KIND_INTERNAL": 1, "SPAN_KIND_SERVER": 2, "SPAN_KIND_CLIENT": 3}
_STATUS = {"STATUS_CODE_UNSET": 0, "STATUS_CODE_OK": 1, "STATUS_CODE_ERROR": 2}
MAX_ERROR_CHARS = 300


class SpanFileError(LoadtestError):
    """The spans file cannot be read as OTLP/JSON."""


@dataclass(frozen=True, slots=True)
class Span:
    trace_id: str
    span_id: str
    parent_id: str
    name: str
    kind: int
    start_ns: int
    end_ns: int
    service: str
    attributes: Mapping[str, Any]
    status_code: int = 0
    status_message: str = ""
    scope: str = ""

    @property
    def duration_s(self) -> float:
        return (self.end_ns - self.start_ns) / 1e9


@dataclass(frozen=True, slots=True)
class StageStats:
    service: str
    name: str
    count: int
    mean_s: float
    p50_s: float
    p90_s: float
    p99_s: float
    max_s: float


def _field(obj: Mapping[str, Any], camel: str, snake: str) -> Any:
    return obj.get(camel, obj.get(snake))


def _id(raw: Any, size: int) -> str:
    """Hex id from the spec's hex or protobuf JSON's base64; "" when absent."""
    if not raw or not isinstance(raw, str):
        return ""
    if len(raw) == 2 * size:
        try:
            bytes.fromhex(raw)
            return raw.lower()
        except ValueError:
            pass
    try:
        return base64.b64decode(raw, validate=True).hex()
    except (binascii.Error, ValueError):
        return raw


def _value(v: Any) -> Any:
    if not isinstance(v, Mapping):
        return v
    for key in ("stringValue", "string_value", "boolValue", "bool_value"):
        if key in v:
            return v[key]
    for key in ("intValue", "int_value"):
        if key in v:
            return int(v[key])  # 64-bit integers are JSON strings
    for key in ("doubleValue", "double_value"):
        if key in v:
            return float(v[key])
    array = _field(v, "arrayValue", "array_value")
    if isinstance(array, Mapping):
        return tuple(_value(x) for x in array.get("values") or ())
    return None


def _attributes(items: Any) -> dict[str, Any]:
    if not isinstance(items, list):
        return {}
    return {
        a["key"]: _value(a.get("value")) for a in items if isinstance(a, Mapping) and "key" in a
    }


def _enum(raw: Any, names: Mapping[str, int]) -> int:
    if isinstance(raw, int):
        return raw
    return names.get(str(raw), 0) if raw is not None else 0


def _span(raw: Mapping[str, Any], service: str, scope: str) -> Span:
    status = raw.get("status") or {}
    return Span(
        trace_id=_id(_field(raw, "traceId", "trace_id"), 16),
        span_id=_id(_field(raw, "spanId", "span_id"), 8),
        parent_id=_id(_field(raw, "parentSpanId", "parent_span_id"), 8),
        name=str(raw.get("name", "")),
        kind=_enum(raw.get("kind"), _KINDS),
        start_ns=int(_field(raw, "startTimeUnixNano", "start_time_unix_nano") or 0),
        end_ns=int(_field(raw, "endTimeUnixNano", "end_time_unix_nano") or 0),
        service=service,
        attributes=_attributes(raw.get("attributes")),
        status_code=_enum(status.get("code"), _STATUS),
        status_message=str(status.get("message") or ""),
        scope=scope,
    )


def spans_of(export: Mapping[str, Any]) -> Iterator[Span]:
    """The spans of one OTLP/JSON `ExportTraceServiceRequest`-shaped object."""
    for rs in _field(export, "resourceSpans", "resource_spans") or ():
        resource = _attributes((rs.get("resource") or {}).get("attributes"))
        service = str(resource.get("service.name", ""))
        for ss in _field(rs, "scopeSpans", "scope_spans") or ():
            scope = str((ss.get("scope") or {}).get("name", ""))
            for raw in ss.get("spans") or ():
                yield _span(raw, service, scope)


def parse_exports(text: bytes, source: str = "spans") -> list[Mapping[str, Any]]:
    """The export objects in a file: one object, an array of them, or JSON lines."""
    try:
        whole = orjson.loads(text)
    except orjson.JSONDecodeError:
        whole = None
    if isinstance(whole, dict):
        return [whole]
    if isinstance(whole, list):
        return [x for x in whole if isinstance(x, dict)]
    exports = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise SpanFileError(f"{source}:{number}: not JSON ({exc})") from exc
        if not isinstance(obj, dict):
            raise SpanFileError(f"{source}:{number}: not an OTLP/JSON object")
        exports.append(obj)
    return exports


def read_spans(path: Path) -> list[Span]:
    """Every span in the file, once each (the same span exported twice counts once)."""
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise SpanFileError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        return dedupe(s for export in parse_exports(text, str(path)) for s in spans_of(export))
    except (AttributeError, KeyError, TypeError, ValueError) as exc:  # a field of a wrong type
        raise SpanFileError(f"{path}: not OTLP/JSON spans ({exc!r})") from exc


def dedupe(spans: Iterable[Span]) -> list[Span]:
    seen: dict[tuple[str, str], Span] = {}
    for s in spans:
        seen.setdefault((s.trace_id, s.span_id), s)
    return list(seen.values())


def is_request(span: Span) -> bool:
    return span.name in REQUEST_SPANS and "gen_ai.operation.name" in span.attributes


def _int(attrs: Mapping[str, Any], key: str) -> int:
    value = attrs.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _agent_turn(span: Span) -> tuple[str | None, int | None]:
    rid = span.attributes.get("dualpath.request_id")
    if isinstance(rid, str) and ":" in rid:
        agent, _, turn = rid.rpartition(":")
        if turn.isdigit():
            return agent, int(turn)
    session = span.attributes.get("dualpath.session.id")
    return (session if isinstance(session, str) else None), None


def _error(span: Span) -> str | None:
    if span.status_code != ERROR:
        return None
    kind = span.attributes.get("error.type")
    text = f"{kind}: {span.status_message}" if kind else span.status_message or "error"
    return text[:MAX_ERROR_CHARS]


def samples_of(spans: Sequence[Span]) -> list[RequestSample]:
    """One sample per gateway request span, in order of arrival. Times are seconds from the
    first request's arrival (in nanoseconds since 1970 a float would lose sub-µs detail)."""
    requests = sorted((s for s in spans if is_request(s)), key=lambda s: s.start_ns)
    t0 = requests[0].start_ns if requests else 0
    turns: dict[str, int] = {}
    out = []
    for span in requests:
        sent, ended = (span.start_ns - t0) / 1e9, (span.end_ns - t0) / 1e9
        a = span.attributes
        agent, turn = _agent_turn(span)
        agent = agent or span.trace_id
        if turn is None:  # the session's requests, counted in order
            turn = turns[agent] = turns.get(agent, -1) + 1
        ttft = a.get("dualpath.ttft_s")
        error = _error(span)
        read_path = a.get("dualpath.read_path")
        out.append(
            RequestSample(
                agent=agent,
                turn=turn,
                sent_at=sent,
                first_token_at=sent + ttft if isinstance(ttft, int | float) else None,
                end_at=ended if error is None else None,
                output_tokens=_int(a, "gen_ai.usage.output_tokens"),
                prompt_tokens=_int(a, "gen_ai.usage.input_tokens"),
                cached_tokens=_int(a, "gen_ai.usage.cache_read.input_tokens"),
                read_path=read_path if isinstance(read_path, str) else None,
                error=error,
            )
        )
    return out


def _stats(service: str, name: str, values: list[float]) -> StageStats:
    def q(p: float) -> float:
        value = percentile(values, p)
        assert value is not None
        return value

    return StageStats(
        service, name, len(values), sum(values) / len(values), q(0.5), q(0.9), q(0.99), max(values)
    )


def stage_stats(spans: Sequence[Span]) -> list[StageStats]:
    """Durations per (service, stage name), plus the two derived gateway stages; by service,
    then by median time, longest first."""
    durations: dict[tuple[str, str], list[float]] = {}
    decode_start = {
        (s.trace_id, s.parent_id): s.start_ns
        for s in spans
        if s.name == "decode" and s.kind == CLIENT
    }
    for s in spans:
        if is_request(s):
            service = s.service or GATEWAY_SERVICE
            wait = s.attributes.get("dualpath.queue_wait_s")
            if isinstance(wait, int | float):
                durations.setdefault((service, "queue.wait"), []).append(float(wait))
            started = decode_start.get((s.trace_id, s.span_id))
            if started is not None:
                key = (service, "gateway.before_dispatch")
                durations.setdefault(key, []).append((started - s.start_ns) / 1e9)
            continue
        durations.setdefault((s.service, s.name), []).append(s.duration_s)
    stats = [_stats(service, name, values) for (service, name), values in durations.items()]
    return sorted(stats, key=lambda st: (st.service, -st.p50_s))
