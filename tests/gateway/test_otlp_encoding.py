"""OTLP requests encoded straight from span rows (`gateway/otlp_encoding.py`) against what the
SDK's own encoder makes of the same rows rebuilt as `ReadableSpan`s (`span_export.readable`, the
path the other exporters still take): decoded with opentelemetry-proto, and byte for byte."""

from __future__ import annotations

import enum
import math
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from engines.otel import resource_for
from gateway.otlp_encoding import MAX_CACHED, SpanEncoder, any_value
from gateway.span_export import SCOPE, SERVICE, readable
from gateway.span_records import Row

INT64 = 1 << 63
_scalars = (
    st.text(max_size=80)
    | st.booleans()
    | st.integers(-INT64, INT64 - 1)
    | st.floats(allow_nan=False)  # JSON carries no NaN, and NaN != NaN would fail the compare
    | st.none()
)
values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=8,
)
"""Every shape a JSON row can hold; integers within int64 (the SDK cannot send others)."""
attributes = st.dictionaries(st.text(max_size=20), values, max_size=8)
ids = st.integers(1, (1 << 64) - 1)
times = st.integers(0, (1 << 64) - 1)


@st.composite
def rows(draw: st.DrawFn) -> Row:
    parent = draw(st.just(0) | ids)
    events = draw(st.lists(st.tuples(st.text(max_size=12), times, attributes), max_size=3))
    return [
        f"{draw(st.integers(1, (1 << 128) - 1)):032x}",
        draw(ids),
        parent,
        draw(st.booleans()),
        draw(st.text(max_size=30)),
        draw(st.sampled_from([0, 1, 2, 3, 4, 9])),  # 9: unknown, INTERNAL in both
        draw(times),
        draw(times),
        draw(attributes),
        [list(e) for e in events],
        draw(st.sampled_from([0, 1, 2, 7])),  # 7: unknown, UNSET in both
        draw(st.text(max_size=20)),
    ]


RESOURCE = resource_for(SERVICE)


def sdk_request(batch: list[Row], resource: Resource = RESOURCE) -> bytes:
    return encode_spans([readable(row, resource) for row in batch]).SerializeToString()


def our_request(batch: list[Row], resource: Resource = RESOURCE) -> bytes:
    encoder = SpanEncoder(resource.attributes, SCOPE.name, "", resource.schema_url)
    return encoder.request([encoder.span(row) for row in batch])


def assert_same(batch: list[Row], resource: Resource = RESOURCE) -> None:
    ours, sdk = our_request(batch, resource), sdk_request(batch, resource)
    decoded = ExportTraceServiceRequest.FromString(ours)
    assert decoded == ExportTraceServiceRequest.FromString(sdk)
    assert ours == sdk  # also the same bytes: fields in number order, as protobuf writes them


@given(st.lists(rows(), max_size=5))
def test_rows_encode_as_the_sdk_encodes_them(batch: list[Row]) -> None:
    assert_same(batch)


@given(st.lists(rows(), min_size=1, max_size=3))
def test_after_the_json_channel_too(batch: list[Row]) -> None:
    """What the export process sees: rows through orjson (tuples become lists)."""
    assert_same(orjson.loads(orjson.dumps(batch)))


def _row(attrs: dict[str, Any], **fields: Any) -> Row:
    row: Row = [f"{7:032x}", 11, 13, True, "span", 1, 100, 200, attrs, [], 0, ""]
    names = ["trace", "span", "parent", "remote", "name", "kind", "start", "end", "attributes",
             "events", "code", "message"]  # fmt: skip
    for name, value in fields.items():
        row[names.index(name)] = value
    return row


def test_a_typical_request_field_by_field() -> None:
    attrs = {"gen_ai.request.model": "m", "gen_ai.request.max_tokens": 16, "dualpath.pe_share": 0.5,
             "dualpath.stream": True, "gen_ai.response.finish_reasons": ["stop"]}  # fmt: skip
    event = ["exception", 150, {"exception.type": "ValueError", "exception.escaped": False}]
    batch = [_row(attrs), _row({}, parent=0, code=2, message="boom", events=[event])]
    decoded = ExportTraceServiceRequest.FromString(our_request(batch))
    (resource_spans,) = decoded.resource_spans
    resource = {kv.key: kv.value.string_value for kv in resource_spans.resource.attributes}
    assert resource["service.name"] == SERVICE
    (scope_spans,) = resource_spans.scope_spans
    assert scope_spans.scope.name == "dualpath.gateway"
    child, root = scope_spans.spans
    assert child.trace_id == (7).to_bytes(16, "big") and child.span_id == (11).to_bytes(8, "big")
    assert child.parent_span_id == (13).to_bytes(8, "big") and child.flags == 0x300  # remote
    assert child.kind == 2 and (child.start_time_unix_nano, child.end_time_unix_nano) == (100, 200)
    got = {kv.key: kv.value for kv in child.attributes}
    assert got["gen_ai.request.max_tokens"].int_value == 16
    assert got["dualpath.pe_share"].double_value == 0.5 and got["dualpath.stream"].bool_value
    assert [v.string_value for v in got["gen_ai.response.finish_reasons"].array_value.values] == [
        "stop"
    ]
    assert root.parent_span_id == b"" and root.flags == 0x100
    assert (root.status.code, root.status.message) == (2, "boom")
    assert root.events[0].name == "exception" and root.events[0].time_unix_nano == 150
    assert_same(batch)


@pytest.mark.parametrize(
    "fields",
    [
        {"code": 1, "message": "kept only with ERROR"},
        {"code": 2, "message": ""},
        {"name": "", "start": 0, "end": 0},  # proto3 leaves zeros and empty strings out
        {"start": 0},
        {"end": 0},
        {"kind": True},  # as the SDK's lookup, True is 1
        {"trace": "0x" + "ab" * 15},  # int(…, 16) reads it; so do we
    ],
)
def test_edges_of_a_row(fields: dict[str, Any]) -> None:
    assert_same([_row({"k": "v"}, **fields)])


def test_a_value_protobuf_cannot_carry_loses_its_attribute_not_the_span() -> None:
    attrs = {"big": 1 << 63, "ok": 1, "nested": [1, 1 << 70], "small": -(1 << 63)}
    assert_same([_row(attrs)])
    decoded = ExportTraceServiceRequest.FromString(our_request([_row(attrs)]))
    span = decoded.resource_spans[0].scope_spans[0].spans[0]
    assert [kv.key for kv in span.attributes] == ["ok", "small"]


def test_cached_fields_tell_true_from_1_and_keys_apart() -> None:
    """The caches key on values: True == 1 and 1 == 1.0 in Python, not in OTLP."""
    batch = [_row({"a": 1}), _row({"a": True}), _row({"a": 1.0}), _row({"a": "1"}),
             _row({"b": 1}), _row({"a": 1}), _row({"a": False}), _row({"a": 0})]  # fmt: skip
    assert_same(batch)


def test_cached_arrays_of_strings_tell_their_items_apart() -> None:
    """Arrays of strings are cached whole: a repeat, and arrays equal to none of them."""
    batch = [_row({"a": ["stop"]}), _row({"a": ["stop"]}), _row({"a": ["stop", "length"]}),
             _row({"a": [1]}), _row({"a": [True]}), _row({"a": [1]}), _row({"a": [["stop"]]}),
             _row({"a": ["stop"]}), _row({"b": ["stop"]}), _row({"a": ["x" * 100]}),
             _row({"a": ["x" * 100]})]  # fmt: skip
    assert_same(batch)
    assert_same(orjson.loads(orjson.dumps(batch)))


def test_caches_stay_bounded() -> None:
    encoder = SpanEncoder({}, "s")
    for i in range(3 * MAX_CACHED):
        encoder.span(_row({f"k{i}": i, "s": f"v{i}", "f": float(i), "b": bool(i)}, name=f"n{i}"))
    assert_same([_row({f"k{i}": i}) for i in range(5)])
    caches = [encoder._heads, *(c for c in vars_of(encoder) if isinstance(c, dict))]
    assert all(len(c) <= MAX_CACHED for c in caches)


def vars_of(encoder: SpanEncoder) -> list[object]:
    attributes = encoder._attributes.__self__  # type: ignore[attr-defined]
    return [getattr(attributes, name) for name in attributes.__slots__]


def test_resource_and_scope_of_any_shape() -> None:
    resource = Resource(
        {"service.name": "x", "n": 3, "f": 2.5, "b": False, "seq": ("a", "b"), "ints": [1, 2]},
        schema_url="https://opentelemetry.io/schemas/1.21.0",
    )
    assert_same([_row({"k": 1})], resource)
    scope = InstrumentationScope("lib", "1.2.3")
    encoder = SpanEncoder(resource.attributes, scope.name, scope.version or "", resource.schema_url)
    ours = encoder.request([encoder.span(_row({}))])
    spans = [readable(_row({}), resource)]
    spans[0]._instrumentation_scope = scope  # the SDK's span, from another library
    assert ours == encode_spans(spans).SerializeToString()


class Color(enum.Enum):
    RED = "red"


class Mode(str, enum.Enum):  # noqa: UP042 — str() is "Mode.FAST", the value "fast"
    FAST = "fast"


class Level(enum.IntEnum):
    HIGH = 3


@pytest.mark.parametrize(
    "value",
    [Mode.FAST, Level.HIGH, b"\x00\x01", bytearray(b"ab"), {"k": [1, {"j": None}]}, math.inf],
)
def test_values_no_json_row_holds_but_a_resource_might(value: Any) -> None:
    assert_same([_row({"v": value})])


def test_an_unencodable_value_raises_for_the_caller_to_drop() -> None:
    with pytest.raises(TypeError):
        any_value(Color.RED)
    with pytest.raises(ValueError):
        any_value(1 << 64)
    assert_same([_row({"color": Color.RED, "n": 1})])  # the SDK drops it as well


@pytest.mark.parametrize(
    "row",
    [
        ["xyz", 1, 0, False, "s", 0, 1, 2, {}, [], 0, ""],  # not hex
        [f"{1 << 130:x}", 1, 0, False, "s", 0, 1, 2, {}, [], 0, ""],  # over 128 bits
        [f"{1:032x}", 1 << 64, 0, False, "s", 0, 1, 2, {}, [], 0, ""],
        [f"{1:032x}", 1, 0, False, "s", 0, -1, 2, {}, [], 0, ""],
        [f"{1:032x}", 1, 0, False, 5, 0, 1, 2, {}, [], 0, ""],
        [f"{1:032x}", 1, 0, False, "s", 0, 1, 2, {}, [["e", 1]], 0, ""],
        [f"{1:032x}", 1, 0, False, "s"],
    ],
)
def test_a_row_that_is_no_span_raises(row: Row) -> None:
    with pytest.raises(Exception):  # noqa: B017 — any: the export process drops the row
        SpanEncoder({}, "s").span(row)
