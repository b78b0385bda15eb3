"""Traces of the gateway's requests (OpenTelemetry): setup and the span helpers the routes call.

Off by default (`engines.otel`: on when `OTEL_TRACES_EXPORTER` or an OTLP endpoint is set). Off,
`Tracing.from_env` returns None, no SDK provider exists and the routes take their untraced path:
no span, no attribute is built. On, each request is one tree:

    chat.completions | completions   SERVER  GenAI attributes + ours (`dualpath.*`), TTFT/TPOT
    ├── session.identify                     how the session was found, its estimated hit
    ├── kv.lookup                            the hit probe: estimated vs confirmed hit tokens
    ├── schedule                             queue wait (held time), the decision and why
    ├── prefill                      CLIENT  the prefill leg; its `traceparent` goes upstream
    └── decode                       CLIENT  the decode leg (the relayed stream), likewise

The client's own `traceparent` is honoured (the request span is its child), and each leg sends
its span's `traceparent` to its worker, whose spans continue the trace
(`engines/sim_worker/tracing.py`). Prompt and completion text are never recorded unless
`DUALPATH_TRACE_CONTENT` is on; then they go in span events, cut at `MAX_CONTENT_CHARS`.

The spans are plain records (`gateway/span_records.py`), exported by the SDK in a process of
their own (`gateway/span_export.py`): the gateway itself never imports the SDK.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import orjson
from starlette.responses import Response

from engines.otel import TracingConfigError, check_exporters, exporter_names
from gateway.errors import APIError
from gateway.relay_response import RelayResponse
from gateway.span_records import CLIENT, Sampler, SpanRecord, Tracer
from gateway.trace_answer import MAX_CONTENT_CHARS, completion_text, cut, note_finish_reasons

if TYPE_CHECKING:
    from gateway.pd_dispatch import Completed
    from gateway.placement import PDPair
    from gateway.request_parsing import ParsedRequest
    from gateway.scheduler.decision import Decision
    from gateway.scheduler.request import SchedRequest
    from gateway.span_shipper import SpanShipper
    from session.tracker import TurnPlan

CHAT_PATH = "/v1/chat/completions"
SPAN_NAMES = {CHAT_PATH: "chat.completions", "/v1/completions": "completions"}
_MAX_ID = 128
_MAX_SERVERS = 4096


class Tracing:
    """The gateway's tracer and its span-export process, owned by the app's lifespan."""

    def __init__(
        self, tracer: Tracer, content: bool = False, shipper: SpanShipper | None = None
    ) -> None:
        self.tracer = tracer
        self.content = content
        """Record prompt and completion text in span events."""
        self.shipper = shipper
        self._servers: dict[str, Mapping[str, Any]] = {}

    @classmethod
    def from_env(cls, content: bool = False) -> Tracing | None:
        """Tracing as the `OTEL_*` environment asks (exporters, sampler); None when it is off.
        A setting that cannot work stops the start (`TracingConfigError`)."""
        names = exporter_names(os.environ)
        if not names:
            return None
        check_exporters(names)  # the export process would only find out once running
        try:
            sampler = Sampler.from_env()
        except ValueError as exc:
            raise TracingConfigError(str(exc)) from None
        from gateway.span_shipper import SpanShipper

        shipper = SpanShipper()
        return cls(Tracer(sampler, shipper.ship), content, shipper)

    def request(self, path: str, headers: Mapping[str, str]) -> RequestTrace:
        return RequestTrace(self, path, headers)

    def server(self, url: str) -> Mapping[str, Any]:
        """A worker's `server.*` attributes, parsed once per worker (bounded by the registry)."""
        attrs = self._servers.get(url)
        if attrs is None:
            where = urlsplit(url)
            attrs = {"server.address": where.hostname or url}
            if where.port is not None:
                attrs["server.port"] = where.port
            if len(self._servers) < _MAX_SERVERS:
                self._servers[url] = attrs
        return attrs

    def shutdown(self) -> None:
        """Flush what is queued (bounded by `OTEL_BSP_EXPORT_TIMEOUT`) and stop exporting."""
        if self.shipper is not None:
            try:
                timeout_ms = float(os.environ.get("OTEL_BSP_EXPORT_TIMEOUT") or 30_000)
            except ValueError:
                timeout_ms = 30_000  # the SDK's default, which the export process falls back to
            self.shipper.close(timeout_ms / 1000 + 5)


def _number(body: Mapping[str, Any], *names: str) -> int | float | None:
    for name in names:
        value = body.get(name)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return value
    return None


class RequestTrace:
    """One request's spans. Stages open and close in order; the request span ends once the
    response was handed back *and* the dispatcher reported the end (either order), or on a
    failure raised to the route."""

    __slots__ = (
        "_completion",
        "_ctx",
        "_decode",
        "_done",
        "_ended",
        "_finish",
        "_on",
        "_prefill",
        "_returned",
        "_stage",
        "_t0",
        "_tracing",
        "_tries",
        "span",
    )

    def __init__(self, tracing: Tracing, path: str, headers: Mapping[str, str]) -> None:
        self._tracing = tracing
        self._t0 = time.monotonic()
        chat = path == CHAT_PATH
        attrs: dict[str, Any] = {
            "gen_ai.operation.name": "chat" if chat else "text_completion",
            "gen_ai.system": "sglang",
        }
        request_id = headers.get("x-request-id")
        if request_id:
            attrs["dualpath.request_id"] = request_id[:_MAX_ID]
        # The client's trace, if it sent one.
        self.span = tracing.tracer.root(
            SPAN_NAMES.get(path, path), headers.get("traceparent"), attrs
        )
        self._on = self.span.sampled
        """False when the sampler dropped this trace: then every step below is a no-op, and the
        workers only get the `traceparent` that tells them it was not sampled."""
        self._stage: SpanRecord | None = None
        self._prefill: SpanRecord | None = None
        self._decode: SpanRecord | None = None
        self._done: Completed | None = None
        self._returned = self._ended = False
        self._tries = 0
        self._finish: list[str] = []
        self._completion: list[bytes] | None = [] if tracing.content else None

    # --- stages -------------------------------------------------------------------------------

    def stage(self, name: str) -> None:
        """Open the next stage's span (closing the previous one if it was left open)."""
        if not self._on:
            return
        self._close_stage({})
        self._stage = self._tracing.tracer.child(name, self.span)

    def _close_stage(self, attrs: Mapping[str, Any]) -> None:
        if self._stage is not None:
            self._stage.set_attributes(attrs)
            self._tracing.tracer.end(self._stage)
            self._stage = None

    def session(self, req: ParsedRequest, plan: TurnPlan | None) -> None:
        if not self._on:
            return
        body = req.body
        attrs: dict[str, Any] = {"gen_ai.request.model": req.model, "dualpath.stream": req.stream}
        if req.batch_size > 1:
            attrs["dualpath.batch_size"] = req.batch_size
        for attr, names in (
            ("gen_ai.request.max_tokens", ("max_completion_tokens", "max_tokens")),
            ("gen_ai.request.temperature", ("temperature",)),
            ("gen_ai.request.top_p", ("top_p",)),
            ("gen_ai.request.seed", ("seed",)),
        ):
            value = _number(body, *names)
            if value is not None:
                attrs[attr] = value
        stage: dict[str, Any] = {}
        if plan is not None:
            attrs["dualpath.session.id"] = attrs["gen_ai.conversation.id"] = plan.session_id
            stage = {
                "dualpath.session.source": plan.source,
                "dualpath.estimated_hit_tokens": plan.hit_tokens,
            }
        self.span.set_attributes(attrs)
        self._close_stage(stage)
        if self._tracing.content:
            prompt = body.get("messages", body.get("prompt"))
            text = orjson.dumps(prompt).decode() if not isinstance(prompt, str) else prompt
            self.span.add_event("gen_ai.content.prompt", {"gen_ai.prompt": cut(text)})

    def kv_lookup(self, plan: TurnPlan, hit: int) -> None:
        if self._on:
            self._close_stage(
                {"dualpath.estimated_hit_tokens": plan.hit_tokens, "dualpath.hit_tokens": hit}
            )

    def scheduled(self, decision: Decision, pair: PDPair, wanted: SchedRequest) -> None:
        if not self._on:
            return
        self._tries += 1
        self.span.set_attributes(
            {
                "dualpath.attempts": self._tries,
                "dualpath.hit_tokens": wanted.hit_tokens,
                "dualpath.append_tokens": wanted.append_tokens,
                "dualpath.read_path": decision.read_path,
                "dualpath.pe_share": decision.pe_share,
                "dualpath.prefill_engine": pair.prefill.url,
                "dualpath.decode_engine": pair.decode.url,
                "dualpath.predicted_ttft_s": decision.predicted_ttft_s,
                "dualpath.predicted_tpot_s": decision.predicted_tpot_s,
                "dualpath.queue_wait_s": decision.waited_s,
            }
        )
        self._close_stage(
            {
                "dualpath.queue_wait_s": decision.waited_s,
                "dualpath.policy": decision.policy,
                "dualpath.schedule.reason": decision.reason[:256],
                "dualpath.schedule.candidates": len(decision.candidates),
            }
        )

    # --- the two legs -------------------------------------------------------------------------

    def legs(
        self, pair: PDPair, headers: Mapping[str, str]
    ) -> tuple[dict[str, str], dict[str, str]]:
        """Open the prefill and decode CLIENT spans; each leg's headers carry its `traceparent`
        (unsampled: the request span's, which tells the workers not to sample either)."""
        if not self._on:
            unsampled = {**headers, "traceparent": self.span.traceparent}
            return unsampled, unsampled
        tracer, server, span = self._tracing.tracer, self._tracing.server, self.span
        prefill = self._prefill = tracer.child("prefill", span, CLIENT, server(pair.prefill.url))
        decode = self._decode = tracer.child("decode", span, CLIENT, server(pair.decode.url))
        return (
            {**headers, "traceparent": prefill.traceparent},
            {**headers, "traceparent": decode.traceparent},
        )

    def prefill_done(self, task: asyncio.Task[None]) -> None:
        """The prefill leg's task ended (answered, failed or cancelled)."""
        span, self._prefill = self._prefill, None  # None when unsampled
        if span is None:
            return
        if task.cancelled():
            span.set_attribute("dualpath.cancelled", True)
        elif (exc := task.exception()) is not None:
            _fail_span(span, exc)
        self._tracing.tracer.end(span)

    # --- the end ------------------------------------------------------------------------------

    def response(self, response: Response) -> Response:
        """The route's answer: a relayed stream is watched as it goes; a whole body is read."""
        if not self._on:
            self._ended = True
            return response
        if isinstance(response, RelayResponse):
            response.chunks = self._watch(response.chunks)
        else:
            self._read_body(bytes(response.body))
        self._returned = True
        if self._done is not None:
            self._end_ok(self._done)
        return response

    def end(self, done: Completed | None) -> None:
        """The dispatcher's `on_end`: called once however the request ended."""
        if not self._on:
            return
        if done is not None:
            self._done = done
            if self._returned:
                self._end_ok(done)
        elif self._returned:  # a stream that broke or whose client left
            self._end(error="stream_aborted", message="the stream ended before it was complete")
        else:
            # This try failed before the response: its decode leg ends here, and a retry opens
            # new legs (`dualpath.attempts` counts them), or the route's `fail` follows.
            decode, self._decode = self._decode, None
            if decode is not None:
                decode.set_error("the try failed before its first byte")
                self._tracing.tracer.end(decode)

    def fail(self, exc: BaseException) -> None:
        """A failure raised to the route (4xx/5xx, shed, client gone while held)."""
        if not self._on:
            self._end()
            return
        if self._stage is not None:
            _fail_span(self._stage, exc)
        self._close_stage({})
        if isinstance(exc, APIError):
            self.span.set_attribute("http.response.status_code", exc.status)
        self._end(error=_error_type(exc), message=str(exc)[:512], exc=exc)

    def _end_ok(self, done: Completed) -> None:
        usage = done.usage or {}
        attrs: dict[str, Any] = {"http.response.status_code": 200}
        for attr, key in (
            ("gen_ai.usage.input_tokens", "prompt_tokens"),
            ("gen_ai.usage.output_tokens", "completion_tokens"),
        ):
            if isinstance(usage.get(key), int):
                attrs[attr] = usage[key]
        details = usage.get("prompt_tokens_details")
        if isinstance(details, dict) and isinstance(details.get("cached_tokens"), int):
            attrs["gen_ai.usage.cache_read.input_tokens"] = details["cached_tokens"]
        if done.first_chunk_at is not None:
            attrs["dualpath.ttft_s"] = done.first_chunk_at - self._t0
            output = attrs.get("gen_ai.usage.output_tokens", 0)
            if output > 1:
                attrs["dualpath.tpot_s"] = (done.ended_at - done.first_chunk_at) / (output - 1)
        if self._finish:
            attrs["gen_ai.response.finish_reasons"] = tuple(self._finish)
        self.span.set_attributes(attrs)
        if self._completion:
            text = completion_text(b"".join(self._completion))
            self.span.add_event("gen_ai.content.completion", {"gen_ai.completion": cut(text)})
        self._end()

    def _end(
        self, *, error: str | None = None, message: str = "", exc: BaseException | None = None
    ) -> None:
        if self._ended:
            return
        self._ended = True
        # The prefill leg ends with its task (`prefill_done`): it may drain after the stream.
        tracer = self._tracing.tracer
        decode, self._decode = self._decode, None
        if decode is not None:
            if error is not None:
                decode.set_error(message)
            tracer.end(decode)
        if error is not None:
            self.span.set_attribute("error.type", error)
            self.span.set_error(message)
            if exc is not None and not isinstance(exc, APIError | asyncio.CancelledError):
                self.span.record_exception(exc)  # a bug: keep its traceback
        tracer.end(self.span)

    # --- reading the answer -------------------------------------------------------------------

    async def _watch(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """Pass a relayed stream on, noting finish reasons (and text, when content is on)."""
        kept = 0
        try:
            async for chunk in chunks:
                if b'"finish_reason":' in chunk:
                    note_finish_reasons(chunk, self._finish)
                if self._completion is not None and kept < 4 * MAX_CONTENT_CHARS:
                    self._completion.append(chunk)
                    kept += len(chunk)
                yield chunk
        finally:
            await chunks.aclose()  # type: ignore[attr-defined]

    def _read_body(self, body: bytes) -> None:
        note_finish_reasons(body, self._finish)
        if self._completion is not None:
            self._completion.append(body)


def _error_type(exc: BaseException) -> str:
    if isinstance(exc, APIError):
        return exc.code or exc.type
    if isinstance(exc, asyncio.CancelledError):
        return "cancelled"
    return type(exc).__qualname__


def _fail_span(span: SpanRecord, exc: BaseException) -> None:
    span.set_attribute("error.type", _error_type(exc))
    span.set_error(str(exc)[:512])
