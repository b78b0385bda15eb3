"""One daemon thread that runs a blocking client's calls in order, off the event loop.

Mooncake's Python calls block in C++: ~0.1 ms normally, ~4.4 s each while the master is down
(the client reconnects inside every call), 60 s when the TCP transport jams, 90 s for `setup()`
against a master that is not there (`reference/mooncake-notes.md` §4-5, and what we saw). So:

- one thread per client, so calls never overlap inside one client (its staging buffer is shared
  by every batch: two concurrent batches could exhaust it);
- a **daemon** thread, not a `ThreadPoolExecutor`: the interpreter joins executor threads at
  exit, and a call stuck in C++ would then hang the process for good; a stuck daemon thread is
  simply abandoned;
- a bound on calls in flight (queued or running): beyond it `submit` refuses at once, so callers
  never pile up behind a stuck call;
- `call` awaits with a deadline; a call still queued when its caller gives up is cancelled and
  never runs.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

_Job = tuple["concurrent.futures.Future[Any]", Callable[..., Any], tuple[Any, ...]]


def _nothing() -> None:
    return None


class WorkerBusy(Exception):
    """Too many calls are queued or running: answer without waiting."""


class BlockingWorker:
    def __init__(self, name: str, max_in_flight: int) -> None:
        self.max_in_flight = max_in_flight
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._pending: set[concurrent.futures.Future[Any]] = set()
        """Submitted and not done. Added on the loop's thread, discarded by a done callback on
        the worker's (single set operations are atomic under the GIL)."""
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    def submit(self, fn: Callable[..., T], *args: Any) -> concurrent.futures.Future[T]:
        if len(self._pending) >= self.max_in_flight:
            raise WorkerBusy(f"{len(self._pending)} calls in flight")
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._pending.add(future)
        future.add_done_callback(self._pending.discard)
        self._jobs.put((future, fn, args))
        return future

    async def call(self, deadline: float, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` on the worker, awaited until `deadline` (the loop's clock).

        Raises `WorkerBusy`, `TimeoutError` (the call may still be running: it holds its place
        in flight until it returns), or whatever `fn` raised.
        """
        remaining = deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            raise TimeoutError("deadline passed before the call")
        return await asyncio.wait_for(asyncio.wrap_future(self.submit(fn, *args)), remaining)

    def shutdown(self, then: Callable[[], Any] | None = None) -> concurrent.futures.Future[Any]:
        """Let the thread end after what is queued and `then()` (e.g. the client's close, which
        must run on this thread after the client's last call); never waits. The future is done
        when the thread has run `then`."""
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._jobs.put((future, then or _nothing, ()))
        self._jobs.put(None)
        return future

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            future, fn, args = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = fn(*args)
            except BaseException as exc:
                future.set_exception(exc)
            else:
                future.set_result(result)
