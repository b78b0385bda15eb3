"""One request's part in its trace: the spans the routes and the dispatcher fill as it goes.

`Tracing.request` (`gateway/tracing.py`) starts each request's trace. A sampled one is a
`SampledTrace`: the request span, its stages and its two legs, as plain records
(`gateway/span_records.py`); an unsampled one is an `UnsampledTrace`, which builds nothing and
only tells the workers not to sample either. Both run on every request, on the event loop, so
the sampled one does no more than it must: attributes go straight into the spans' own dicts, a
relayed stream is read by the dispatcher's own loop (`watcher`), one chunk's tail at a time, and
the TTFT is the dispatcher's own timestamp (bench/tracing_overhead.py measures it all).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import TYPE_CHECKING, Protocol

import orjson
from starlette.responses import Response

from gateway.errors import APIError
from gateway.relay_response import RelayResponse
from gateway.span_records import CLIENT, SpanRecord
from gateway.trace_answer import (
    MAX_CONTENT_CHARS,
    completion_text,
    cut,
    note_finish_reason_at,
    note_finish_reasons,
)

if TYPE_CHECKING:
    from gateway.pd_dispatch import Completed
    from gateway.placement import PDPair
    from gateway.request_parsing import ParsedRequest
    from gateway.scheduler.decision import Decision
    from gateway.scheduler.request import SchedRequest
    from gateway.tracing import Tracing
    from session.tracker import TurnPlan

CHAT_PATH = "/v1/chat/completions"
SPAN_NAMES = {CHAT_PATH: "chat.completions", "/v1/completions": "completions"}
_MAX_ID = 128
_FINISH_KEY = b'"finish_reason":'
_FINISH_AT = len(_FINISH_KEY)

_REQUEST_NUMBERS = (
    ("gen_ai.request.max_tokens", "max_completion_tokens"),
    ("gen_ai.request.max_tokens", "max_tokens"),  # only when the newer name gave no number
    ("gen_ai.request.temperature", "temperature"),
    ("gen_ai.request.top_p", "top_p"),
    ("gen_ai.request.seed", "seed"),
)


class RequestTrace(Protocol):
    """One request's part in its trace, as the routes and the dispatcher drive it: sampled
    (`SampledTrace`: its spans) or not (`UnsampledTrace`: only the workers' `traceparent`)."""

    sampled: bool
    """False: no span is built, and only the `traceparent` goes upstream (`legs`)."""

    def stage(self, name: str) -> None:
        """Open the next stage's span (closing the previous one if it was left open)."""

    def session(self, req: ParsedRequest, plan: TurnPlan | None) -> None:
        """The request as parsed and its session: closes `session.identify`."""

    def kv_lookup(self, plan: TurnPlan, hit: int) -> None:
        """The hit probe's answer: closes `kv.lookup`."""

    def scheduled(self, decision: Decision, pair: PDPair, wanted: SchedRequest) -> None:
        """A try's placement: closes `schedule`."""

    def legs(
        self, pair: PDPair, headers: Mapping[str, str]
    ) -> tuple[dict[str, str], dict[str, str]]:
        """Open the prefill and decode CLIENT spans; each leg's headers carry its `traceparent`
        (unsampled: the request span's, which tells the workers not to sample either)."""

    def prefill_done(self, task: asyncio.Task[None]) -> None:
        """The prefill leg's task ended (answered, failed or cancelled)."""

    def watcher(self) -> Callable[[bytes], None] | None:
        """What the dispatcher's relay calls with each chunk it passes on (None: nothing to
        note). A stream relayed without it is wrapped by `response` instead."""

    def response(self, response: Response) -> Response:
        """The route's answer: a relayed stream is watched as it goes; a whole body is read."""

    def end(self, done: Completed | None) -> None:
        """The dispatcher's `on_end`: called once however the request ended."""

    def fail(self, exc: BaseException) -> None:
        """A failure raised to the route (4xx/5xx, shed, client gone while held)."""


class UnsampledTrace:
    """A request whose trace the sampler dropped: no span, no attribute; its workers are told
    not to sample either."""

    __slots__ = ("_traceparent",)
    sampled = False

    def __init__(self, traceparent: str) -> None:
        self._traceparent = traceparent

    def stage(self, name: str) -> None:
        pass

    def session(self, req: ParsedRequest, plan: TurnPlan | None) -> None:
        pass

    def kv_lookup(self, plan: TurnPlan, hit: int) -> None:
        pass

    def scheduled(self, decision: Decision, pair: PDPair, wanted: SchedRequest) -> None:
        pass

    def legs(
        self, pair: PDPair, headers: Mapping[str, str]
    ) -> tuple[dict[str, str], dict[str, str]]:
        unsampled = {**headers, "traceparent": self._traceparent}
        return unsampled, unsampled

    def prefill_done(self, task: asyncio.Task[None]) -> None:
        pass

    def watcher(self) -> Callable[[bytes], None] | None:
        return None

    def response(self, response: Response) -> Response:
        return response

    def end(self, done: Completed | None) -> None:
        pass

    def fail(self, exc: BaseException) -> None:
        pass


class SampledTrace:
    """A sampled request's spans (`RequestTrace`). Stages open and close in order; the request
    span ends once the response was handed back *and* the dispatcher reported the end (either
    order), or on a failure raised to the route. This runs on every sampled request, on the
    event loop (bench/tracing_overhead.py): attributes go straight into the spans' own dicts."""

    __slots__ = (
        "_completion",
        "_decode",
        "_done",
        "_ended",
        "_finish",
        "_kept",
        "_one_choice",
        "_prefill",
        "_returned",
        "_stage",
        "_t0",
        "_tracing",
        "_tries",
        "_watched",
        "span",
    )
    sampled = True
    _stage: SpanRecord | None
    _prefill: SpanRecord | None
    _decode: SpanRecord | None
    _done: Completed | None
    _one_choice: bool
    """The answer has one choice (known once `session` saw the request)."""
    _completion: list[bytes] | None

    def __init__(
        self, tracing: Tracing, span: SpanRecord, path: str, headers: Mapping[str, str]
    ) -> None:
        self._tracing = tracing
        self._t0 = time.monotonic()
        self.span = span
        self._stage = self._prefill = self._decode = self._done = None
        self._returned = self._ended = self._watched = self._one_choice = False
        self._tries = self._kept = 0
        self._finish: list[str] = []
        self._completion = [] if tracing.content else None
        attrs = span.attributes
        attrs["gen_ai.operation.name"] = "chat" if path == CHAT_PATH else "text_completion"
        attrs["gen_ai.system"] = "sglang"
        if "x-request-id" in headers and (request_id := headers["x-request-id"]):
            attrs["dualpath.request_id"] = request_id[:_MAX_ID]

    # --- stages -------------------------------------------------------------------------------

    def stage(self, name: str) -> None:
        tracer = self._tracing.tracer
        if self._stage is not None:
            tracer.end(self._stage)
        self._stage = tracer.child(name, self.span)

    def _close_stage(self) -> None:
        if self._stage is not None:
            self._tracing.tracer.end(self._stage)
            self._stage = None

    def session(self, req: ParsedRequest, plan: TurnPlan | None) -> None:
        body = req.body
        attrs = self.span.attributes
        attrs["gen_ai.request.model"] = req.model
        attrs["dualpath.stream"] = req.stream
        if req.batch_size > 1:
            attrs["dualpath.batch_size"] = req.batch_size
        self._one_choice = req.batch_size == 1
        for attr, name in _REQUEST_NUMBERS:
            value = body.get(name)
            # A number, not a bool (which `isinstance(value, int)` would let in).
            if (type(value) is int or type(value) is float) and attr not in attrs:
                attrs[attr] = value
        if plan is not None:
            attrs["dualpath.session.id"] = attrs["gen_ai.conversation.id"] = plan.session_id
            if self._stage is not None:
                stage = self._stage.attributes
                stage["dualpath.session.source"] = plan.source
                stage["dualpath.estimated_hit_tokens"] = plan.hit_tokens
        self._close_stage()
        if self._tracing.content:
            prompt = body.get("messages", body.get("prompt"))
            text = orjson.dumps(prompt).decode() if not isinstance(prompt, str) else prompt
            self.span.add_event("gen_ai.content.prompt", {"gen_ai.prompt": cut(text)})

    def kv_lookup(self, plan: TurnPlan, hit: int) -> None:
        if self._stage is not None:
            stage = self._stage.attributes
            stage["dualpath.estimated_hit_tokens"] = plan.hit_tokens
            stage["dualpath.hit_tokens"] = hit
            self._close_stage()

    def scheduled(self, decision: Decision, pair: PDPair, wanted: SchedRequest) -> None:
        self._tries += 1
        attrs = self.span.attributes
        attrs["dualpath.attempts"] = self._tries
        attrs["dualpath.hit_tokens"] = wanted.hit_tokens
        attrs["dualpath.append_tokens"] = wanted.append_tokens
        attrs["dualpath.read_path"] = decision.read_path
        attrs["dualpath.pe_share"] = decision.pe_share
        attrs["dualpath.prefill_engine"] = pair.prefill.url
        attrs["dualpath.decode_engine"] = pair.decode.url
        attrs["dualpath.predicted_ttft_s"] = decision.predicted_ttft_s
        attrs["dualpath.predicted_tpot_s"] = decision.predicted_tpot_s
        attrs["dualpath.queue_wait_s"] = decision.waited_s
        if self._stage is not None:
            stage = self._stage.attributes
            stage["dualpath.queue_wait_s"] = decision.waited_s
            stage["dualpath.policy"] = decision.policy
            stage["dualpath.schedule.reason"] = decision.reason[:256]
            stage["dualpath.schedule.candidates"] = len(decision.candidates)
            self._close_stage()

    # --- the two legs -------------------------------------------------------------------------

    def legs(
        self, pair: PDPair, headers: Mapping[str, str]
    ) -> tuple[dict[str, str], dict[str, str]]:
        tracer, server, span = self._tracing.tracer, self._tracing.server, self.span
        prefill = tracer.child("prefill", span, CLIENT, server(pair.prefill.url))
        decode = tracer.child("decode", span, CLIENT, server(pair.decode.url))
        self._prefill, self._decode = prefill, decode
        return (
            {**headers, "traceparent": prefill.traceparent},
            {**headers, "traceparent": decode.traceparent},
        )

    def prefill_done(self, task: asyncio.Task[None]) -> None:
        span, self._prefill = self._prefill, None
        if span is None:
            return
        if task.cancelled():
            span.attributes["dualpath.cancelled"] = True
        elif (exc := task.exception()) is not None:
            _fail_span(span, exc)
        self._tracing.tracer.end(span)

    # --- the end ------------------------------------------------------------------------------

    def watcher(self) -> Callable[[bytes], None] | None:
        self._watched = True
        return self._seen

    def response(self, response: Response) -> Response:
        if isinstance(response, RelayResponse):
            if not self._watched:
                response.chunks = self._watch(response.chunks)
        else:
            self._read_body(bytes(response.body))
        self._returned = True
        if self._done is not None:
            self._end_ok(self._done)
        return response

    def end(self, done: Completed | None) -> None:
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
        if self._stage is not None:
            _fail_span(self._stage, exc)
        self._close_stage()
        if isinstance(exc, APIError):
            self.span.attributes["http.response.status_code"] = exc.status
        self._end(error=_error_type(exc), message=str(exc)[:512], exc=exc)

    def _end_ok(self, done: Completed) -> None:
        attrs = self.span.attributes
        attrs["http.response.status_code"] = 200
        output = 0
        if usage := done.usage:
            if isinstance(value := usage.get("prompt_tokens"), int):
                attrs["gen_ai.usage.input_tokens"] = value
            if isinstance(value := usage.get("completion_tokens"), int):
                attrs["gen_ai.usage.output_tokens"] = output = value
            details = usage.get("prompt_tokens_details")
            if isinstance(details, dict) and isinstance(details.get("cached_tokens"), int):
                attrs["gen_ai.usage.cache_read.input_tokens"] = details["cached_tokens"]
        # The dispatcher's own timestamps (it keeps them for the metrics): nothing timed twice.
        if done.first_chunk_at is not None:
            attrs["dualpath.ttft_s"] = done.first_chunk_at - self._t0
            if output > 1:
                attrs["dualpath.tpot_s"] = (done.ended_at - done.first_chunk_at) / (output - 1)
        if self._finish:
            attrs["gen_ai.response.finish_reasons"] = tuple(self._finish)
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
            self.span.attributes["error.type"] = error
            self.span.set_error(message)
            if exc is not None and not isinstance(exc, APIError | asyncio.CancelledError):
                self.span.record_exception(exc)  # a bug: keep its traceback
        tracer.end(self.span)

    # --- reading the answer -------------------------------------------------------------------

    def _seen(self, chunk: bytes) -> None:
        """Note a relayed chunk's finish reasons (and text, when content is on)."""
        if self._one_choice:
            # One choice: its finish reason is in the last event that names one, after which
            # only the usage event and `[DONE]` come; each chunk's last is enough to read, not
            # every byte of the stream (the rest say null).
            at = chunk.rfind(_FINISH_KEY)
            if at >= 0 and chunk[at + _FINISH_AT : at + _FINISH_AT + 1] != b"n":  # not null
                note_finish_reason_at(chunk, at, self._finish)
        else:
            note_finish_reasons(chunk, self._finish)
        if self._completion is not None and self._kept < 4 * MAX_CONTENT_CHARS:
            self._completion.append(chunk)
            self._kept += len(chunk)

    async def _watch(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """Pass on a stream that was not relayed by the dispatcher, noting it (`_seen`)."""
        try:
            async for chunk in chunks:
                self._seen(chunk)
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
    span.attributes["error.type"] = _error_type(exc)
    span.set_error(str(exc)[:512])
