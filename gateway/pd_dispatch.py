"""PD dispatch, as SGLang's router does it: the same body to one prefill and one decode worker.

Both legs get the client's JSON plus `bootstrap_host`, `bootstrap_port` and a random 63-bit
`bootstrap_room` (one per item for batches). The decode worker's response is what the client gets
(its stream relayed chunk by chunk); the prefill's is drained. A prefill failure before the decode
answers fails the request instead of leaving the decode waiting for a partner that never comes.
If the client goes away, both legs are aborted (`/abort_request`) and their connections closed.

Nothing is committed to the client before the decode's first output: a stream's response starts
with its first bytes in hand, so any failure before them (a leg's connect error, 5xx, reset,
timeout) is an `AttemptFailed` the route may retry on another pair (`gateway.failover`). After
the first byte a failure ends the stream with an SSE error event and `data: [DONE]`.

Each leg holds a `Lease` on its worker while it runs (in-flight counts, for draining) and tells
the worker's circuit breaker how it went: a success at the decode's first output or the prefill's
answer, a failure when the worker failed the request, nothing when the client left.
(`engines` errors become OpenAI-shaped ones in `gateway.upstream_errors`.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from starlette.responses import Response

from engines.errors import UpstreamError
from engines.pd_client import UpstreamClient, UpstreamResponse
from engines.worker_registry import Lease, WorkerRegistry
from gateway.errors import APIError
from gateway.failover import AttemptFailed
from gateway.kv_route import KVRoute
from gateway.placement import PDPair
from gateway.relay_response import RelayResponse
from gateway.request_parsing import ParsedRequest
from gateway.upstream_body import encode_body, upstream_body
from gateway.upstream_errors import classify, translate, worker_error
from gateway.usage import SSEUsageFilter, patch_response_usage

if TYPE_CHECKING:
    from gateway.request_trace import RequestTrace

log = logging.getLogger(__name__)

_DONE = b"data: [DONE]\n\n"
_SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}
FORWARDED_HEADERS = ("traceparent", "tracestate", "x-request-id")


@dataclass(frozen=True, slots=True)
class Completed:
    """A turn the decode worker finished, for whoever records it (sessions, metrics)."""

    usage: dict[str, Any] | None
    first_chunk_at: float | None
    """`time.monotonic()` when the first streamed chunk went out; None when not streamed."""
    ended_at: float
    """`time.monotonic()` when the last byte went out."""


OnComplete = Callable[[Completed], None]
OnEnd = Callable[[Completed | None], None]
"""Called exactly once however a request ends: its `Completed`, or None when it failed."""


def _ignore(_: Completed | None) -> None:
    pass


def _failed(task: asyncio.Task[None]) -> bool:
    return task.done() and not task.cancelled() and task.exception() is not None


def _failure(exc: UpstreamError | APIError, prefill: asyncio.Task[None]) -> APIError:
    """The error to report: the prefill's own when it failed first, else this one."""
    if _failed(prefill):
        cause = prefill.exception()
        if isinstance(cause, APIError | UpstreamError):
            exc = cause
    return exc if isinstance(exc, APIError) else translate(exc)


def _settle(lease: Lease) -> Callable[[asyncio.Task[None]], None]:
    """The prefill leg's verdict for its worker's breaker, and its lease released, when it ends."""

    def done(task: asyncio.Task[None]) -> None:
        if not task.cancelled():  # cancelled: by us, because of the decode or the client
            exc = task.exception()
            worker_fault = isinstance(exc, UpstreamError | APIError) and classify(exc)[0]
            (lease.failed if worker_fault else lease.succeeded)()
        lease.release()

    return done


@dataclass(slots=True, eq=False)
class _Try:
    """One try's open legs: what the relay and the clean-up need."""

    pair: PDPair
    rid: str | None
    prefill: asyncio.Task[None]
    response: UpstreamResponse
    decode_lease: Lease


class PDDispatcher:
    def __init__(
        self,
        client: UpstreamClient,
        registry: WorkerRegistry,
        rng: random.Random | None = None,
        on_stage: Callable[[str, float], None] | None = None,
    ) -> None:
        self._client = client
        self._registry = registry
        """Leases each leg's worker: in-flight counts (drains) and breaker verdicts."""
        self._rng = rng or random.Random()
        self._on_stage = on_stage
        """Told the seconds the gateway spends building each upstream body (`dispatch`)."""
        # Aborts and drains that outlive their request; a reference keeps them from being
        # garbage-collected, and each removes itself when done (so the set is bounded by load).
        self._background: set[asyncio.Task[Any]] = set()

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def _abort(self, url: str, rid: str | None) -> None:
        if rid is None:
            return
        with contextlib.suppress(UpstreamError):
            await self._client.request_json("POST", url + "/abort_request", {"rid": rid})

    def abort_both(self, pair: PDPair, rid: str | None) -> None:
        self._spawn(self._abort(pair.prefill.url, rid))
        self._spawn(self._abort(pair.decode.url, rid))

    async def _prefill_leg(self, url: str, payload: bytes, headers: dict[str, str]) -> None:
        response = await self._client.open(url, payload, headers)
        try:
            body = await response.read()
        finally:
            await response.aclose()
        if response.status >= 300:
            raise worker_error(response.status, body, "prefill")

    def _close_unread(self, task: asyncio.Task[UpstreamResponse]) -> None:
        """A decode response that arrived just as its try was given up: drop its connection."""
        if not task.cancelled() and task.exception() is None:
            self._spawn(task.result().aclose())

    def _blame(
        self,
        exc: UpstreamError | APIError,
        pair: PDPair,
        prefill: asyncio.Task[None],
        decode_lease: Lease,
    ) -> AttemptFailed:
        """A try that failed before its first byte: the client's error, the worker to blame
        (the prefill's own failure explains the decode's), and the decode breaker's verdict
        (the prefill's comes from its task, `_settle`)."""
        prefill_failed = _failed(prefill)
        cause = prefill.exception() if prefill_failed else exc
        if not isinstance(cause, UpstreamError | APIError):
            cause = exc
        fault, retryable = classify(cause)
        error = cause if isinstance(cause, APIError) else translate(cause)
        if prefill_failed:
            return AttemptFailed(error, pair.prefill if fault else None, retryable)
        (decode_lease.failed if fault else decode_lease.succeeded)()
        return AttemptFailed(error, pair.decode if fault else None, retryable)

    def _abandon(self, t: _Try) -> None:
        """Stop a try that will not be relayed: both legs aborted, its connection dropped."""
        t.prefill.cancel()
        self.abort_both(t.pair, t.rid)
        self._spawn(t.response.aclose())
        t.decode_lease.release()

    async def _open(
        self,
        req: ParsedRequest,
        pair: PDPair,
        headers: dict[str, str],
        messages_json: bytes | None,
        kv: KVRoute | None,
        trace: RequestTrace | None = None,
    ) -> _Try:
        """Start both legs and wait for the decode's response head (a 2xx)."""
        started = time.monotonic()
        body, rid = upstream_body(req, pair, kv, self._rng)
        payload = encode_body(body, messages_json)
        if self._on_stage is not None:
            self._on_stage("dispatch", time.monotonic() - started)
        prefill_headers = decode_headers = headers
        if trace is not None:  # each leg's span goes upstream as its `traceparent`
            prefill_headers, decode_headers = trace.legs(pair, headers)
        prefill_lease = self._registry.lease(pair.prefill)
        decode_lease = self._registry.lease(pair.decode)
        prefill = asyncio.create_task(
            self._prefill_leg(pair.prefill.url + req.path, payload, prefill_headers)
        )
        prefill.add_done_callback(_settle(prefill_lease))
        if trace is not None and trace.sampled:
            prefill.add_done_callback(trace.prefill_done)
        decode = asyncio.create_task(
            self._client.open(pair.decode.url + req.path, payload, decode_headers)
        )
        try:
            done, _ = await asyncio.wait({prefill, decode}, return_when=asyncio.FIRST_COMPLETED)
            if prefill in done and (failed := prefill.exception()) is not None:
                raise failed
            response = await decode
        except BaseException as exc:
            failure = None
            if isinstance(exc, UpstreamError | APIError):
                failure = self._blame(exc, pair, prefill, decode_lease)
            prefill.cancel()
            decode.cancel()
            decode.add_done_callback(self._close_unread)
            self.abort_both(pair, rid)
            decode_lease.release()
            if failure is not None:
                raise failure from exc
            raise
        t = _Try(pair, rid, prefill, response, decode_lease)
        if response.status >= 300:
            try:
                error = worker_error(response.status, await response.read(), "decode")
            except UpstreamError as exc:
                error = translate(exc)
            failure = self._blame(error, pair, prefill, decode_lease)
            self._abandon(t)
            raise failure
        self._close_on_prefill_failure(prefill, response)
        return t

    def _close_on_prefill_failure(
        self, prefill: asyncio.Task[None], response: UpstreamResponse
    ) -> None:
        """A prefill that fails after the decode answered would leave the decode waiting for KV
        until its own timeout; close the decode leg at once instead."""

        def on_done(task: asyncio.Task[None]) -> None:
            if not task.cancelled() and task.exception() is not None:
                self._spawn(response.aclose())

        prefill.add_done_callback(on_done)

    async def _first_output(
        self, t: _Try, chunks: AsyncIterator[bytes], usage: SSEUsageFilter
    ) -> bytes:
        """A stream's first bytes for the client; a failure before them is an `AttemptFailed`
        (nothing was sent: the turn may go to another pair)."""
        try:
            while True:
                try:
                    chunk = await anext(chunks)
                except StopAsyncIteration:
                    out = usage.flush()
                    if out and not _failed(t.prefill):
                        break
                    raise UpstreamError(
                        f"{t.pair.decode.url} ended its stream without data", phase="chunk"
                    ) from None
                if out := usage.feed(chunk):
                    break
        except (UpstreamError, APIError) as exc:
            failure = self._blame(exc, t.pair, t.prefill, t.decode_lease)
            self._abandon(t)
            raise failure from exc
        except BaseException:
            self._abandon(t)
            raise
        t.decode_lease.succeeded()
        return out

    async def _read_whole(self, t: _Try) -> bytes:
        """An unstreamed answer, both legs done; a failure is an `AttemptFailed` (nothing was
        sent yet)."""
        try:
            body = await t.response.read()
            await t.prefill
        except (UpstreamError, APIError) as exc:
            failure = self._blame(exc, t.pair, t.prefill, t.decode_lease)
            self._abandon(t)
            raise failure from exc
        except BaseException:
            self._abandon(t)
            raise
        t.decode_lease.succeeded()
        t.decode_lease.release()
        await t.response.aclose()
        return body

    async def dispatch(
        self,
        req: ParsedRequest,
        pair: PDPair,
        headers: dict[str, str],
        *,
        response_headers: Mapping[str, str] | None = None,
        on_complete: OnComplete | None = None,
        on_first_chunk: Callable[[], None] | None = None,
        on_end: OnEnd | None = None,
        messages_json: bytes | None = None,
        kv: KVRoute | None = None,
        trace: RequestTrace | None = None,
    ) -> Response:
        """Relay one try; `on_complete` is called once if (and only if) it finishes,
        `on_first_chunk` when the first token goes out (streams), `on_end` in every case.

        Raises `AttemptFailed` when it failed before any byte went to the client.
        `messages_json`, when given, is `orjson.dumps(req.body["messages"])` already made (the
        session step needs it too), so a long context is serialised once, not twice. `trace`,
        when tracing is on, opens each leg's span and gives it its `traceparent`.
        """
        end = on_end or _ignore
        try:
            t = await self._open(req, pair, headers, messages_json, kv, trace)
            if req.stream:
                usage = SSEUsageFilter(req.include_usage)
                chunks = t.response.chunks()
                first = await self._first_output(t, chunks, usage)
            else:
                body = await self._read_whole(t)
        except BaseException:
            end(None)
            raise
        if req.stream:
            first_at = time.monotonic()
            if on_first_chunk is not None:
                on_first_chunk()
            watch = trace.watcher() if trace is not None else None
            relay = self._relay(t, chunks, first, first_at, usage, on_complete, end, watch)
            return RelayResponse(relay, {**_SSE_HEADERS, **(response_headers or {})})
        patched, usage_obj = patch_response_usage(body)
        done = Completed(usage_obj, None, time.monotonic())
        if on_complete is not None:
            on_complete(done)
        end(done)
        return Response(patched, media_type="application/json", headers=response_headers)

    async def _relay(
        self,
        t: _Try,
        chunks: AsyncIterator[bytes],
        first: bytes,
        first_at: float,
        usage: SSEUsageFilter,
        on_complete: OnComplete | None,
        on_end: OnEnd,
        watch: Callable[[bytes], None] | None = None,
    ) -> AsyncIterator[bytes]:
        """`watch`, when tracing samples this request, sees each chunk as it goes out: here,
        rather than in another generator around this one, which would cost every chunk."""
        finished = False
        done: Completed | None = None
        try:
            if watch is not None:
                watch(first)
            yield first
            async for chunk in chunks:
                if out := usage.feed(chunk):
                    if watch is not None:
                        watch(out)
                    yield out
            out = usage.flush()
            if watch is not None:
                watch(out)
            yield out
            if _failed(t.prefill):
                raise UpstreamError("the prefill leg failed", phase="prefill")
            finished = True
            done = Completed(usage.usage, first_at, time.monotonic())
            if on_complete is not None:
                on_complete(done)
        except (UpstreamError, APIError) as exc:
            # The stream already started: tell the client in-band and end it cleanly.
            err = _failure(exc, t.prefill)
            if not _failed(t.prefill) and classify(exc)[0]:
                t.decode_lease.failed()  # it broke off a stream it had begun
            log.warning("stream from %s broke: %s", t.pair.decode.url, err.message)
            yield b"data: " + err.json_bytes() + b"\n\n" + _DONE
        finally:
            on_end(done)
            if not finished:
                self.abort_both(t.pair, t.rid)
                t.prefill.cancel()
            elif not t.prefill.done():
                self._spawn(self._drain(t.prefill))
            await t.response.aclose()
            t.decode_lease.release()

    async def _drain(self, prefill: asyncio.Task[None]) -> None:
        with contextlib.suppress(APIError, UpstreamError, asyncio.CancelledError):
            await prefill
