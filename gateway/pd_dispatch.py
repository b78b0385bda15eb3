"""PD dispatch, as SGLang's router does it: the same body to one prefill and one decode worker.

Both legs get the client's JSON plus `bootstrap_host`, `bootstrap_port` and a random 63-bit
`bootstrap_room` (one per item for batches). The decode worker's response is what the client gets
(its stream relayed chunk by chunk); the prefill's is drained. A prefill failure before the decode
answers fails the request instead of leaving the decode waiting for a partner that never comes.
If the client goes away, both legs are aborted (`/abort_request`) and their connections closed.

This module is also the one place where `engines` errors become OpenAI-shaped API errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
from starlette.responses import Response

from engines.errors import UpstreamError, UpstreamTimeout
from engines.pd_client import UpstreamClient, UpstreamResponse
from gateway.errors import APIError, InvalidRequest, UpstreamFailed, UpstreamTimedOut
from gateway.kv_route import KVRoute
from gateway.placement import PDPair
from gateway.relay_response import RelayResponse
from gateway.request_parsing import ParsedRequest
from gateway.usage import SSEUsageFilter, patch_response_usage

if TYPE_CHECKING:
    from gateway.tracing import RequestTrace

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


def _translate(exc: UpstreamError) -> APIError:
    if isinstance(exc, UpstreamTimeout):
        return UpstreamTimedOut(f"worker timed out ({exc.phase}): {exc}")
    return UpstreamFailed(f"worker failed: {exc}")


def _worker_error(status: int, body: bytes, leg: str) -> APIError:
    """A worker's non-2xx answer as an OpenAI error: its 4xx kept, its 5xx a 502."""
    message = body.decode(errors="replace")[:500]
    with contextlib.suppress(orjson.JSONDecodeError, AttributeError, TypeError):
        obj = orjson.loads(body)
        inner = obj.get("error", obj)
        message = str(inner.get("message", message) if isinstance(inner, dict) else inner)
    if 400 <= status < 500 and status not in (408, 429):
        err: APIError = InvalidRequest(message)
        err.status = status
        return err
    return UpstreamFailed(f"{leg} worker answered {status}: {message}")


def _failed(task: asyncio.Task[None]) -> bool:
    return task.done() and not task.cancelled() and task.exception() is not None


def _failure(exc: UpstreamError | APIError, prefill: asyncio.Task[None]) -> APIError:
    """The error to report: the prefill's own when it failed first, else this one."""
    if _failed(prefill):
        cause = prefill.exception()
        if isinstance(cause, APIError | UpstreamError):
            exc = cause
    return exc if isinstance(exc, APIError) else _translate(exc)


def encode_body(body: dict[str, Any], messages_json: bytes | None) -> bytes:
    """`orjson.dumps(body)`, with the messages spliced in from `messages_json` when given."""
    if messages_json is None or "messages" not in body:
        return orjson.dumps(body)
    rest = orjson.dumps({k: v for k, v in body.items() if k != "messages"})
    tail = b"," + rest[1:] if len(rest) > 2 else b"}"
    return b'{"messages":' + messages_json + tail


class PDDispatcher:
    def __init__(
        self,
        client: UpstreamClient,
        rng: random.Random | None = None,
        on_stage: Callable[[str, float], None] | None = None,
    ) -> None:
        self._client = client
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

    def upstream_body(
        self, req: ParsedRequest, pair: PDPair, kv: KVRoute | None = None
    ) -> tuple[dict[str, Any], str | None]:
        """The body both workers receive, and the rid used to abort it (None for batches)."""
        body = dict(req.body)
        extension = kv.extension(pair) if kv is not None else None
        if extension is not None:
            body["dualpath"] = extension
        host, port = pair.prefill.bootstrap_host, pair.prefill.bootstrap_port
        room = self._rng.getrandbits(63)
        if req.batch_size > 1:
            n = req.batch_size
            body["bootstrap_host"] = [host] * n
            body["bootstrap_port"] = [port] * n
            body["bootstrap_room"] = [room + i for i in range(n)]
        else:
            body["bootstrap_host"] = host
            body["bootstrap_port"] = port
            body["bootstrap_room"] = room
        rid = None
        if req.batch_size == 1:
            rid = body.setdefault("rid", uuid.uuid4().hex)
        if req.stream:  # usage is always wanted; the relay drops it if the client did not ask
            body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        return body, rid if isinstance(rid, str) else None

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
            raise _worker_error(response.status, body, "prefill")

    async def _open_decode(
        self,
        req: ParsedRequest,
        pair: PDPair,
        headers: dict[str, str],
        messages_json: bytes | None,
        kv: KVRoute | None,
        trace: RequestTrace | None = None,
    ) -> tuple[UpstreamResponse, asyncio.Task[None], str | None]:
        started = time.monotonic()
        body, rid = self.upstream_body(req, pair, kv)
        payload = encode_body(body, messages_json)
        if self._on_stage is not None:
            self._on_stage("dispatch", time.monotonic() - started)
        prefill_headers = decode_headers = headers
        if trace is not None:  # each leg's span goes upstream as its `traceparent`
            prefill_headers, decode_headers = trace.legs(pair, headers)
        prefill = asyncio.create_task(
            self._prefill_leg(pair.prefill.url + req.path, payload, prefill_headers)
        )
        if trace is not None:
            prefill.add_done_callback(trace.prefill_done)
        decode = asyncio.create_task(
            self._client.open(pair.decode.url + req.path, payload, decode_headers)
        )
        try:
            done, _ = await asyncio.wait({prefill, decode}, return_when=asyncio.FIRST_COMPLETED)
            if prefill in done and prefill.exception() is not None:
                raise prefill.exception()  # type: ignore[misc]
            response = await decode
        except BaseException as exc:
            for task in (prefill, decode):
                task.cancel()
            self.abort_both(pair, rid)
            if isinstance(exc, UpstreamError):
                raise _translate(exc) from exc
            raise
        if response.status >= 300:
            body_bytes = await response.read()
            await response.aclose()
            prefill.cancel()
            self.abort_both(pair, rid)
            raise _worker_error(response.status, body_bytes, "decode")
        return response, prefill, rid

    def _close_on_prefill_failure(
        self, prefill: asyncio.Task[None], response: UpstreamResponse
    ) -> None:
        """A prefill that fails after the decode answered would leave the decode waiting for KV
        until its own timeout; close the decode leg at once instead."""

        def on_done(task: asyncio.Task[None]) -> None:
            if not task.cancelled() and task.exception() is not None:
                self._spawn(response.aclose())

        prefill.add_done_callback(on_done)

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
        """Relay one request; `on_complete` is called once if (and only if) it finishes,
        `on_first_chunk` when the first token goes out (streams), `on_end` in every case.

        `messages_json`, when given, is `orjson.dumps(req.body["messages"])` already made (the
        session step needs it too), so a long context is serialised once, not twice. `trace`,
        when tracing is on, opens each leg's span and gives it its `traceparent`.
        """
        end = on_end or _ignore
        try:
            response, prefill, rid = await self._open_decode(
                req, pair, headers, messages_json, kv, trace
            )
        except BaseException:
            end(None)
            raise
        self._close_on_prefill_failure(prefill, response)
        if req.stream:
            relay = self._relay(req, pair, response, prefill, rid, on_complete, on_first_chunk, end)
            return RelayResponse(relay, {**_SSE_HEADERS, **(response_headers or {})})
        try:
            body = await response.read()
            await prefill
        except (UpstreamError, APIError) as exc:
            self.abort_both(pair, rid)
            end(None)
            raise _failure(exc, prefill) from exc
        except BaseException:
            end(None)
            raise
        finally:
            prefill.cancel()
            await response.aclose()
        patched, usage = patch_response_usage(body)
        done = Completed(usage, None, time.monotonic())
        if on_complete is not None:
            on_complete(done)
        end(done)
        return Response(patched, media_type="application/json", headers=response_headers)

    async def _relay(
        self,
        req: ParsedRequest,
        pair: PDPair,
        response: UpstreamResponse,
        prefill: asyncio.Task[None],
        rid: str | None,
        on_complete: OnComplete | None,
        on_first_chunk: Callable[[], None] | None,
        on_end: OnEnd,
    ) -> AsyncIterator[bytes]:
        usage = SSEUsageFilter(req.include_usage)
        finished = False
        first_at: float | None = None
        done: Completed | None = None
        try:
            async for chunk in response.chunks():
                out = usage.feed(chunk)
                if out:
                    if first_at is None:
                        first_at = time.monotonic()
                        if on_first_chunk is not None:
                            on_first_chunk()
                    yield out
            yield usage.flush()
            if _failed(prefill):
                raise UpstreamError("the prefill leg failed", phase="prefill")
            finished = True
            done = Completed(usage.usage, first_at, time.monotonic())
            if on_complete is not None:
                on_complete(done)
        except (UpstreamError, APIError) as exc:
            # The stream already started: tell the client in-band and end it cleanly.
            err = _failure(exc, prefill)
            log.warning("stream from %s broke: %s", pair.decode.url, err.message)
            yield b"data: " + err.json_bytes() + b"\n\n" + _DONE
        finally:
            on_end(done)
            if not finished:
                self.abort_both(pair, rid)
                prefill.cancel()
            elif not prefill.done():
                self._spawn(self._drain(prefill))
            await response.aclose()

    async def _drain(self, prefill: asyncio.Task[None]) -> None:
        with contextlib.suppress(APIError, UpstreamError, asyncio.CancelledError):
            await prefill
