"""The request path's spans as plain records: sampled, timed and attributed without the SDK.

Building a request's six spans through the OpenTelemetry SDK costs about 0.3 ms of the event loop
and encoding them to OTLP about as much again (bench/README.md, tracing overhead); the gateway's
whole own cost per request is about 1.3 ms. So the gateway fills these records (a few µs each)
and ships the ended ones, as JSON rows, to its span-export process (`gateway/span_export.py`),
which encodes them straight to OTLP for the OTLP exporters and rebuilds the SDK's spans only for
the others. The records keep the SDK's meaning: W3C ids, the standard samplers
(`OTEL_TRACES_SAMPLER`), span kinds and status codes by the API's numbers, the `exception`
event's attributes.
"""

from __future__ import annotations

import os
import random
import traceback
from collections.abc import Callable, Mapping
from time import time_ns
from typing import Any

# opentelemetry.trace.SpanKind and StatusCode values, so the export side maps them one to one.
INTERNAL, SERVER, CLIENT = 0, 1, 2
UNSET, OK, ERROR = 0, 1, 2

_LOW_64 = (1 << 64) - 1
_getrandbits = random.getrandbits  # the module's generator, one lookup fewer per id
_SAMPLERS = (
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
)

Row = list[Any]
"""An ended span on the wire: see `SpanRecord.row`."""
MAX_MESSAGE = 128 * 1024
"""Largest message on the span channel: under a Unix socket's default buffer (about 208 KiB),
which caps one SEQPACKET message."""


class SpanRecord:
    """One span; the subset of the SDK span's methods that `gateway/tracing.py` uses."""

    __slots__ = (
        "attributes",
        "end_ns",
        "events",
        "kind",
        "message",
        "name",
        "parent_id",
        "parent_remote",
        "sampled",
        "span_id",
        "start_ns",
        "status",
        "trace_hex",
        "trace_id",
    )

    def __init__(
        self,
        name: str,
        trace_id: int,
        parent_id: int,
        kind: int,
        attributes: dict[str, Any] | None,
        sampled: bool = True,
        parent_remote: bool = False,
        trace_hex: str = "",
    ) -> None:
        """`attributes` becomes the span's own dict (not copied); `trace_hex` is `trace_id` as
        32 hex digits, when the caller has it already (a trace's spans format it once)."""
        self.name = name
        self.trace_id = trace_id
        self.trace_hex = trace_hex or f"{trace_id:032x}"
        self.span_id = _getrandbits(64) or 1
        self.parent_id = parent_id
        self.parent_remote = parent_remote
        self.kind = kind
        self.sampled = sampled
        self.attributes: dict[str, Any] = {} if attributes is None else attributes
        self.events: list[Row] | tuple[()] = ()  # a list once an event is added
        self.status = UNSET
        self.message = ""
        self.start_ns = time_ns()
        self.end_ns = 0

    @property
    def traceparent(self) -> str:
        """W3C `traceparent` naming this span as the parent."""
        return f"00-{self.trace_hex}-{self.span_id:016x}-{'01' if self.sampled else '00'}"

    def set_attribute(self, key: str, value: Any) -> None:
        self.attributes[key] = value

    def set_attributes(self, attributes: Mapping[str, Any]) -> None:
        self.attributes.update(attributes)

    def set_error(self, message: str) -> None:
        self.status, self.message = ERROR, message

    def add_event(self, name: str, attributes: Mapping[str, Any]) -> None:
        if not isinstance(self.events, list):
            self.events = []
        self.events.append([name, time_ns(), dict(attributes)])

    def record_exception(self, exc: BaseException) -> None:
        """The semantic conventions' `exception` event, as the SDK records it."""
        stack = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        self.add_event(
            "exception",
            {
                "exception.type": type(exc).__qualname__,
                "exception.message": str(exc),
                "exception.stacktrace": stack,
                "exception.escaped": False,
            },
        )

    def row(self) -> Row:
        """What the export process rebuilds the span from (JSON-safe; ids fit in 64 bits but
        the trace id does not, so it travels as hex)."""
        return [
            self.trace_hex,
            self.span_id,
            self.parent_id,
            self.parent_remote,
            self.name,
            self.kind,
            self.start_ns,
            self.end_ns,
            self.attributes,
            self.events,
            self.status,
            self.message,
        ]


def unsampled_traceparent(trace_id: int) -> str:
    """W3C `traceparent` for the workers of a request whose trace is not sampled: its trace, a
    fresh parent span id (of a span never recorded), and the flag that says so."""
    return f"00-{trace_id:032x}-{_getrandbits(64) or 1:016x}-00"


class Sampler:
    """The specification's standard samplers, decided on the trace id the way the SDK does
    (`TraceIdRatioBased`: the low 64 bits below rate × 2⁶⁴), so a trace sampled here is
    sampled by an SDK that sees the same id."""

    def __init__(self, name: str = "parentbased_always_on", rate: float = 1.0) -> None:
        if name not in _SAMPLERS:
            raise ValueError(f"unknown sampler {name!r}; one of {', '.join(_SAMPLERS)}")
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"sampler ratio {rate} is not within [0, 1]")
        self.parent_based = name.startswith("parentbased_")
        root = name.removeprefix("parentbased_")
        ratio = {"always_on": 1.0, "always_off": 0.0}.get(root, rate)
        self.bound = round(ratio * (1 << 64))

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Sampler:
        env = os.environ if env is None else env
        name = env.get("OTEL_TRACES_SAMPLER", "").strip().lower() or "parentbased_always_on"
        arg = env.get("OTEL_TRACES_SAMPLER_ARG", "").strip()
        try:
            rate = float(arg) if arg else 1.0
        except ValueError:
            raise ValueError(f"OTEL_TRACES_SAMPLER_ARG={arg!r} is not a number") from None
        return cls(name, rate)

    def sampled(self, trace_id: int, parent_sampled: bool | None) -> bool:
        """`parent_sampled` is None for a new trace."""
        if self.parent_based and parent_sampled is not None:
            return parent_sampled
        return (trace_id & _LOW_64) < self.bound


def parse_traceparent(value: str) -> tuple[int, int, bool] | None:
    """(trace id, parent span id, sampled) of a valid W3C version-00 `traceparent`."""
    parts = value.strip().split("-")
    if len(parts) < 4 or len(parts[0]) != 2 or parts[0] == "ff":
        return None
    version, trace, span, flags = parts[:4]
    if len(trace) != 32 or len(span) != 16 or len(flags) != 2:
        return None
    if version == "00" and len(parts) > 4:  # version 00 has exactly four fields
        return None
    try:
        trace_id, span_id, bits = int(trace, 16), int(span, 16), int(flags, 16)
    except ValueError:
        return None
    if not trace_id or not span_id:
        return None
    return trace_id, span_id, bool(bits & 1)


class Tracer:
    """Starts the records of one process: root spans (continuing a client's `traceparent`) and
    their children; `ship` gets each sampled span once it ends."""

    def __init__(self, sampler: Sampler, ship: Callable[[Row], None]) -> None:
        self.sampler = sampler
        self._ship = ship

    def sample(self, traceparent: str | None) -> tuple[int, int, bool]:
        """(trace id, parent span id, sampled) of a root span continuing `traceparent` (a new
        trace when it is absent or invalid; parent 0): the decision `root` starts a span with,
        which an unsampled request needs without one (`unsampled_traceparent`)."""
        parent = parse_traceparent(traceparent) if traceparent else None
        if parent is None:
            trace_id = _getrandbits(128) or 1
            return trace_id, 0, self.sampler.sampled(trace_id, None)
        trace_id, parent_id, parent_sampled = parent
        return trace_id, parent_id, self.sampler.sampled(trace_id, parent_sampled)

    def root(
        self, name: str, traceparent: str | None, attributes: dict[str, Any] | None = None
    ) -> SpanRecord:
        trace_id, parent_id, sampled = self.sample(traceparent)
        return SpanRecord(name, trace_id, parent_id, SERVER, attributes, sampled, parent_id != 0)

    def child(
        self,
        name: str,
        parent: SpanRecord,
        kind: int = INTERNAL,
        attributes: dict[str, Any] | None = None,
    ) -> SpanRecord:
        """`attributes` becomes the child's own dict (not copied)."""
        return SpanRecord(
            name,
            parent.trace_id,
            parent.span_id,
            kind,
            attributes,
            parent.sampled,
            False,
            parent.trace_hex,
        )

    def end(self, span: SpanRecord) -> None:
        span.end_ns = time_ns()
        if span.sampled:
            self._ship(span.row())
