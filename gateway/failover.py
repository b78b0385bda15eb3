"""What happens when a worker fails a turn: which failures are retried, on which pair, how often.

A try that fails *before any byte reached the client* (`AttemptFailed`) may go again on another
prefill/decode pair, with a new bootstrap room, avoiding the worker that failed it:

- retried: a connect error or connect timeout, a reset before the response, a worker's 5xx (or
  408/429), a stream that ends before its first token: nothing was sent, another pair can serve;
- not retried: a first-byte or between-chunk timeout (the worker may still be computing; a retry
  would double the wait the timeout bounds: 504 at once) and a worker's 4xx (the request is bad
  anywhere: the worker's answer is relayed). `gateway.upstream_errors.classify` decides.

`Attempts` bounds the tries (`RetryConfig.max_attempts`); when they run out, or no other pair is
left, the client gets the last try's error (502/504), or 503 when nothing could be placed. After
the first byte nothing is retried: the stream ends with an SSE error event and `[DONE]`
(`gateway.pd_dispatch`).

`CancelOnDisconnect` lets the route notice a client that hangs up while its request is held,
prefilling or waiting for the first token: the work is cancelled (both legs aborted) at once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from types import TracebackType

from starlette.types import Receive

from engines.worker_registry import Worker
from gateway.errors import APIError, ClientClosedRequest, GatewayError
from gateway.scheduler.request import RequestId, SchedRequest

log = logging.getLogger(__name__)


class AttemptFailed(GatewayError):
    """A try that failed before any byte went to the client."""

    def __init__(self, error: APIError, worker: Worker | None, retryable: bool) -> None:
        super().__init__(error.message)
        self.error = error
        """What the client gets if no other try follows."""
        self.worker = worker
        """The worker that failed it (the one to avoid); None when no worker is to blame."""
        self.retryable = retryable


class Attempts:
    """The tries of one turn: how many went, and which workers failed them."""

    __slots__ = ("_rid", "count", "excluded", "last", "max_attempts")

    def __init__(self, rid: RequestId, max_attempts: int) -> None:
        self._rid = rid
        self.max_attempts = max(max_attempts, 1)
        self.count = 1
        self.excluded: frozenset[str] = frozenset()
        self.last: AttemptFailed | None = None

    def retry(self, failed: AttemptFailed, wanted: SchedRequest) -> SchedRequest:
        """The request for the next try, or `failed.error` raised when none may follow."""
        self.last = failed
        if failed.worker is not None:
            self.excluded |= {failed.worker.url}
        if not failed.retryable or self.count >= self.max_attempts:
            raise failed.error from failed
        self.count += 1
        log.warning("retrying a turn (try %d) after: %s", self.count, failed.error.message)
        # A fresh scheduler id: the failed try was reported finished under the old one.
        return dataclasses.replace(wanted, rid=RequestId(f"{self._rid}~{self.count}"))


class CancelOnDisconnect:
    """`async with CancelOnDisconnect(receive):` cancels the block when the client disconnects
    and raises `ClientClosedRequest` (499) instead of the cancellation.

    For use after the request body was read: ASGI's `receive` then only reports the disconnect.
    """

    __slots__ = ("_gone", "_receive", "_task", "_watcher")

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self._gone = False
        self._task: asyncio.Task[object] | None = None
        self._watcher: asyncio.Task[None] | None = None

    async def _watch(self) -> None:
        while (await self._receive())["type"] != "http.disconnect":
            pass
        self._gone = True
        if self._task is not None:
            self._task.cancel()

    async def __aenter__(self) -> CancelOnDisconnect:
        self._task = asyncio.current_task()
        self._watcher = asyncio.create_task(self._watch())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if (watcher := self._watcher) is not None:
            # Dropped before it ends: its CancelledError's traceback holds `self`, so keeping it
            # would leave a reference cycle (some 30 objects a request) to the cyclic GC.
            self._watcher = None
            watcher.cancel()
        if not (self._gone and self._task is not None and self._task.cancelling()):
            return
        # Our cancel, and no one else's: the block's own cleanup (aborting both legs) has run.
        # A block that finished anyway returns its response, which notices the disconnect too.
        if self._task.uncancel() == 0 and exc_type is asyncio.CancelledError:
            raise ClientClosedRequest("the client closed the request") from exc
