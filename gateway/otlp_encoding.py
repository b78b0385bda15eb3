"""OTLP trace requests (`ExportTraceServiceRequest`, protobuf) encoded straight from span rows.

The span-export process used to rebuild each row as the SDK's `ReadableSpan` for the OTLP
exporter to encode: Python objects for every span, event and attribute, then protobuf messages
for each again. Here a row (`gateway.span_records.SpanRecord.row`) becomes its `Span` message's
bytes directly, and what repeats from span to span is encoded once: the resource and scope
(`SpanEncoder.request`), each span's name and kind, whole attribute fields for strings,
integers and short arrays of strings, the key part of floats and booleans (bounded caches). The
bytes are the ones the SDK's encoder (`opentelemetry.exporter.otlp.proto.common.trace_encoder.
encode_spans`) makes of the same row, its rules included: a value protobuf cannot carry (an
integer outside int64) loses its attribute, not the span; a status message travels only with
ERROR; `flags` says whether the parent was remote. tests/gateway/test_otlp_encoding.py holds it
to that.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from typing import Any

MAX_CACHED = 4096
"""Bound on each cache of encoded fields; a full cache starts over."""
_MAX_CACHED_STRING = 64
"""Longer string values are likely unique (messages, stack traces): not cached."""
_MAX_CACHED_ITEMS = 4
"""Arrays of up to this many short strings are cached whole."""

# A tag is (field number << 3) | wire type: 0 varint, 1 fixed64, 2 length-delimited, 5 fixed32.
_FIRST, _SECOND, _THIRD = b"\x0a", b"\x12", b"\x1a"  # fields 1, 2, 3, length-delimited
_SPAN_NAME, _SPAN_KIND, _SPAN_ATTRIBUTE, _SPAN_EVENT = b"\x2a", b"\x30", b"\x4a", b"\x5a"
_SPAN_STATUS, _SPAN_FLAGS = b"\x7a", b"\x85\x01"
_ERROR = 2  # StatusCode.ERROR, the same number in the API and in OTLP
_HAS_IS_REMOTE, _IS_REMOTE = 0x100, 0x200  # SpanFlags

_MIN_INT64, _MAX_INT64 = -(1 << 63), (1 << 63) - 1
_U64 = 1 << 64
_ONE_BYTE = [bytes((n,)) for n in range(128)]
_DOUBLE = struct.Struct("<d").pack
_FIXED64 = struct.Struct("<Q").pack
_IDS = struct.Struct(">2s16s2sQ").pack  # trace_id, span_id
_IDS_PARENT = struct.Struct(">2s16s2sQ2sQ").pack  # … and parent_span_id
_TIMES = struct.Struct("<cQcQ").pack  # start_time_unix_nano, end_time_unix_nano


def _varint(n: int) -> bytes:
    if n < 128:
        return _ONE_BYTE[n] if n >= 0 else _varint(n + _U64)  # int64: two's complement
    out = bytearray()
    while n >= 128:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(tag: bytes, body: bytes) -> bytes:
    """A length-delimited field."""
    n = len(body)
    return tag + (_ONE_BYTE[n] if n < 128 else _varint(n)) + body


def _text(tag: bytes, text: str) -> bytes:
    """A proto3 string field: absent when empty."""
    return _field(tag, str.encode(text)) if text else b""


def any_value(value: Any) -> bytes:
    """An `AnyValue` message as the SDK encodes `value`; `ValueError` or `TypeError` where it
    cannot (the SDK then drops the attribute)."""
    kind = value.__class__
    if kind is str:
        return _field(_FIRST, value.encode())
    if kind is bool:
        return b"\x10\x01" if value else b"\x10\x00"
    if kind is int:
        if not _MIN_INT64 <= value <= _MAX_INT64:
            raise ValueError(f"{value} is outside int64")
        return b"\x18" + _varint(value)
    if kind is float:
        return b"\x21" + _DOUBLE(value)
    if value is None:
        return b""
    if kind is list or kind is tuple:
        return _field(b"\x2a", b"".join([_field(_FIRST, any_value(v)) for v in value]))
    return _other_value(value)


def _other_value(value: Any) -> bytes:
    # Subclasses and other containers, tested in the SDK's order (`_encode_value`).
    if isinstance(value, bool):
        return any_value(bool(value))
    if isinstance(value, str):
        return _field(_FIRST, str.encode(value))  # a str enum's value, not its str()
    if isinstance(value, int):
        return any_value(int(value))
    if isinstance(value, float):
        return any_value(float(value))
    if isinstance(value, bytes):
        return _field(b"\x3a", value)
    if isinstance(value, Sequence):
        return any_value(list(value))
    if isinstance(value, Mapping):
        pairs = [_field(_FIRST, key_value(str(k), v)) for k, v in value.items()]
        return _field(b"\x32", b"".join(pairs))
    raise TypeError(f"invalid type {type(value).__name__} of value {value!r}")


def key_value(key: str, value: Any) -> bytes:
    """A `KeyValue` message."""
    return _text(_FIRST, key) + _field(_SECOND, any_value(value))


def _bounded(cache: dict[Any, Any]) -> dict[Any, Any]:
    if len(cache) >= MAX_CACHED:
        cache.clear()
    return cache


class _Attributes:
    """Attributes as fields of one tag (span, event or resource attributes)."""

    __slots__ = ("_bools", "_floats", "_pairs", "_tag")

    def __init__(self, tag: bytes) -> None:
        self._tag = tag
        self._pairs: dict[tuple[str, str | int], bytes] = {}
        self._floats: dict[str, bytes] = {}
        self._bools: dict[str, tuple[bytes, bytes]] = {}

    def encode(self, attrs: Mapping[str, Any]) -> list[bytes]:
        """Each attribute as a field; one the SDK could not encode is left out, as there."""
        pairs, floats, bools = self._pairs, self._floats, self._bools
        out = []
        for key, value in attrs.items():
            kind = value.__class__
            if kind is str or kind is int:  # never a bool: True == 1 must not find 1's field
                field = pairs.get((key, value))
                if field is None:
                    field = self._pair(key, value)
                    if field is None:
                        continue
                out.append(field)
            elif kind is float:
                head = floats.get(key)
                if head is None:
                    head = self._float_head(key)
                out.append(head + _DOUBLE(value))
            elif kind is bool:
                both = bools.get(key)
                if both is None:
                    both = self._bools_of(key)
                out.append(both[value])
            elif kind is list and len(value) <= _MAX_CACHED_ITEMS:  # finish reasons and the like
                items = tuple(value)
                try:
                    # Only arrays of strings are cached, and only strings equal strings.
                    field = pairs.get((key, items))  # type: ignore[arg-type]
                except TypeError:  # an unhashable item: a nested array, a map
                    field = None
                if field is None:
                    field = self._array(key, items)
                    if field is None:
                        continue
                out.append(field)
            else:
                try:
                    out.append(_field(self._tag, key_value(key, value)))
                except (ValueError, TypeError):
                    continue
        return out

    def _pair(self, key: str, value: str | int) -> bytes | None:
        try:
            field = _field(self._tag, key_value(key, value))
        except ValueError:  # an int outside int64
            return None
        if not isinstance(value, str) or len(value) <= _MAX_CACHED_STRING:
            _bounded(self._pairs)[(key, value)] = field
        return field

    def _array(self, key: str, items: tuple[Any, ...]) -> bytes | None:
        try:
            field = _field(self._tag, key_value(key, items))
        except (ValueError, TypeError):  # an item the SDK cannot encode either
            return None
        if all(v.__class__ is str and len(v) <= _MAX_CACHED_STRING for v in items):
            _bounded(self._pairs)[(key, items)] = field  # type: ignore[index]
        return field

    def _float_head(self, key: str) -> bytes:
        # A double's field has one length whatever its value: all but its last 8 bytes repeat.
        head = _field(self._tag, key_value(key, 0.0))[:-8]
        _bounded(self._floats)[key] = head
        return head

    def _bools_of(self, key: str) -> tuple[bytes, bytes]:
        both = (_field(self._tag, key_value(key, False)), _field(self._tag, key_value(key, True)))
        _bounded(self._bools)[key] = both
        return both


def _status(code: int, message: str) -> bytes:
    return _field(
        _SPAN_STATUS, _text(_SECOND, message) + (b"\x18" + _varint(code) if code else b"")
    )


_FLAGS = {
    remote: _SPAN_FLAGS + struct.pack("<I", _HAS_IS_REMOTE | remote) for remote in (0, _IS_REMOTE)
}
_ENDS = {
    (code, remote): _status(code, "") + _FLAGS[remote] for code in (0, 1, 2) for remote in _FLAGS
}
"""Status and flags end every span; without a message, they are one of these six."""


class SpanEncoder:
    """Rows to `Span` fields, and batches of them to one request under one resource and scope.
    Not thread-safe (its caches): one per thread that encodes."""

    def __init__(
        self,
        resource: Mapping[str, Any],
        scope: str,
        scope_version: str = "",
        resource_schema_url: str = "",
    ) -> None:
        self._attributes = _Attributes(_SPAN_ATTRIBUTE).encode
        self._event_attributes = _Attributes(_THIRD).encode
        self._heads: dict[tuple[str, int], bytes] = {}
        resource_body = b"".join(_Attributes(_FIRST).encode(resource))
        self._resource = _field(_FIRST, resource_body)
        self._scope = _field(_FIRST, _text(_FIRST, scope) + _text(_SECOND, scope_version))
        self._resource_schema = _text(_THIRD, resource_schema_url)

    def request(self, spans: Sequence[bytes]) -> bytes:
        """An `ExportTraceServiceRequest` holding `spans` (from `span`), in one join."""
        if not spans:
            return b""  # as the SDK: no resource without spans
        scope_spans = len(self._scope) + sum(map(len, spans))
        scope_length = _varint(scope_spans)
        resource_spans = len(self._resource) + 1 + len(scope_length) + scope_spans
        resource_spans += len(self._resource_schema)
        head = [_FIRST, _varint(resource_spans), self._resource, _SECOND, scope_length]
        return b"".join([*head, self._scope, *spans, self._resource_schema])

    def span(self, row: Sequence[Any]) -> bytes:
        """One row (`SpanRecord.row`'s order) as a `ScopeSpans.spans` field. A row that does
        not describe a span raises (`ValueError`, `TypeError`, `OverflowError`, `struct.error`
        and the like)."""
        trace, span_id, parent_id, remote, name, kind, start, end, attrs, events, code, msg = row
        try:
            trace_id = bytes.fromhex(trace)  # our shipper's 32 hex digits
        except ValueError:
            trace_id = b""
        if len(trace_id) != 16:  # anything else as the SDK reads it: int(trace, 16)
            trace_id = int(trace, 16).to_bytes(16, "big")
        if parent_id:
            ids = _IDS_PARENT(b"\x0a\x10", trace_id, b"\x12\x08", span_id, b"\x22\x08", parent_id)
        else:
            ids = _IDS(b"\x0a\x10", trace_id, b"\x12\x08", span_id)
        head = self._heads.get((name, kind))
        if head is None:
            head = self._head(name, kind)
        parts = [ids, head]
        if start and end:
            parts.append(_TIMES(b"\x39", start, b"\x41", end))
        elif start or end:  # proto3 leaves a zero out
            parts.append(b"\x39" + _FIXED64(start) if start else b"\x41" + _FIXED64(end))
        if attrs:
            parts += self._attributes(attrs)
        for event in events:
            parts.append(self._event(*event))
        remote_flag = _IS_REMOTE if parent_id and remote else 0
        if code == _ERROR and msg and isinstance(msg, str):  # the SDK keeps ERROR's only
            parts.append(_status(_ERROR, msg) + _FLAGS[remote_flag])
        else:
            parts.append(_ENDS.get((code, remote_flag)) or _ENDS[(0, remote_flag)])
        return _field(_SECOND, b"".join(parts))

    def _head(self, name: str, kind: int) -> bytes:
        """Name and kind (the API's `SpanKind` + 1; unknown: INTERNAL)."""
        proto_kind = kind + 1 if kind in (0, 1, 2, 3, 4) else 1
        head = _text(_SPAN_NAME, name) + _SPAN_KIND + _varint(int(proto_kind))
        _bounded(self._heads)[(name, kind)] = head
        return head

    def _event(self, name: str, time_ns: int, attrs: Mapping[str, Any]) -> bytes:
        body = [b"\x09" + _FIXED64(time_ns)] if time_ns else []
        body.append(_text(_SECOND, name))
        body += self._event_attributes(attrs)
        return _field(_SPAN_EVENT, b"".join(body))
