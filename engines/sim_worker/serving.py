"""The generation endpoints' flow: parse, run on the worker, answer JSON or SSE.

As SGLang does, a stream's first output is awaited before the response starts, so errors that
happen before any token (bad input, decode waiting timeout) are plain HTTP errors; later ones are
SSE events. A client that goes away aborts its request, before and during the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from engines.sim_worker.errors import RequestAborted
from engines.sim_worker.inputs import ApiRequest, GenRequest
from engines.sim_worker.responses import (
    DONE,
    OpenAIStreamer,
    chat_object,
    completion_object,
    error_body,
    generate_error_body,
    generate_object,
    sse,
)
from engines.sim_worker.worker import ReqState, SimWorker

T = TypeVar("T")
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class ClientGone(Exception):
    pass


async def _wait_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def until_disconnect(request: Request, work: Awaitable[T]) -> T:
    """`work`'s result, or ClientGone (with `work` cancelled) if the client disconnects first."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_disconnect(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    if task.cancelled():
        raise ClientGone
    return task.result()


async def _next(agen: AsyncIterator[ReqState]) -> ReqState:
    return await anext(agen)


async def _last(agen: AsyncIterator[ReqState]) -> ReqState:
    state: ReqState | None = None
    async for state in agen:  # noqa: B007 - the last snapshot is the answer
        pass
    assert state is not None
    return state


def _http_error(state: ReqState, kind: str) -> Response | None:
    """The HTTP error for a request that failed before producing anything, else None."""
    err = state.error
    if err is None or state.output_ids or isinstance(err, RequestAborted):
        return None
    make = generate_error_body if kind == "generate" else error_body
    return JSONResponse(make(err.message, err.status_code, err.err_type), err.status_code)


def _final_object(state: ReqState, kind: str, api: ApiRequest, cache_report: bool) -> Any:
    if kind == "chat":
        return chat_object(state, api.model, cache_report)
    if kind == "completion":
        return completion_object(state, api.model, cache_report)
    return generate_object(state)


def _renderer(kind: str, api: ApiRequest, cache_report: bool) -> Callable[[ReqState], list[bytes]]:
    if kind == "generate":
        return lambda st: [sse(generate_object(st))]
    streamer = OpenAIStreamer(kind, api.model, api.include_usage, cache_report)
    return streamer.chunks


async def serve_generation(
    request: Request, worker: SimWorker, kind: str, api: ApiRequest
) -> Response:
    if kind == "generate" and api.batch:
        return await _serve_batch(request, worker, api)
    cache_report = worker.config.enable_cache_report
    agen = worker.run(api.items[0], worker.trace_parent(request.headers))
    try:
        if not api.stream:
            state = await until_disconnect(request, _last(agen))
            return _http_error(state, kind) or JSONResponse(
                _final_object(state, kind, api, cache_report)
            )
        first = await until_disconnect(request, _next(agen))
    except ClientGone:
        await agen.aclose()
        return Response(status_code=499)
    failed = _http_error(first, kind)
    if failed is not None:
        await agen.aclose()
        return failed
    render = _renderer(kind, api, cache_report)

    async def body() -> AsyncIterator[bytes]:
        state = first
        try:
            while True:
                if state.error is not None and not isinstance(state.error, RequestAborted):
                    yield sse({"error": error_body(state.error.message, state.error.status_code)})
                else:
                    for chunk in render(state):
                        yield chunk
                if state.finish_reason is not None:
                    break
                state = await anext(agen)
            yield DONE
        finally:
            await agen.aclose()

    return StreamingResponse(body(), media_type="text/event-stream", headers=SSE_HEADERS)


async def _serve_batch(request: Request, worker: SimWorker, api: ApiRequest) -> Response:
    parent = worker.trace_parent(request.headers)
    gens = [worker.run(item, parent) for item in api.items]
    if not api.stream:
        try:
            states = await until_disconnect(request, asyncio.gather(*(_last(g) for g in gens)))
        except ClientGone:
            return Response(status_code=499)
        return JSONResponse([generate_object(s) for s in states])
    return StreamingResponse(
        _merge(api.items, gens), media_type="text/event-stream", headers=SSE_HEADERS
    )


async def _merge(items: tuple[GenRequest, ...], gens: list[AsyncIterator[ReqState]]):
    """Chunks of a batch's items, interleaved as they come, each tagged with its index."""
    queue: asyncio.Queue[bytes | None] = asyncio.Queue()

    async def pump(i: int, agen: AsyncIterator[ReqState]) -> None:
        try:
            async for state in agen:
                queue.put_nowait(sse(generate_object(state, index=i)))
        finally:
            queue.put_nowait(None)

    tasks = [asyncio.create_task(pump(i, g)) for i, g in enumerate(gens)]
    try:
        left = len(items)
        while left:
            chunk = await queue.get()
            if chunk is None:
                left -= 1
            else:
                yield chunk
        yield DONE
    finally:
        for task in tasks:
            task.cancel()
