"""What a worker's failure means to the client: the one place where `engines` errors become
OpenAI-shaped API errors, and where it is decided whose fault a failure is and whether another
prefill/decode pair may be tried (`gateway.failover`).
"""

from __future__ import annotations

import contextlib

import orjson

from engines.errors import UpstreamError, UpstreamTimeout
from gateway.errors import APIError, InvalidRequest, UpstreamFailed, UpstreamTimedOut


def translate(exc: UpstreamError) -> APIError:
    """A failure to reach or read a worker: 504 for a timeout, else 502."""
    if isinstance(exc, UpstreamTimeout):
        return UpstreamTimedOut(f"worker timed out ({exc.phase}): {exc}")
    return UpstreamFailed(f"worker failed: {exc}")


def worker_error(status: int, body: bytes, leg: str) -> APIError:
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


def classify(exc: UpstreamError | APIError) -> tuple[bool, bool]:
    """(the worker's fault, worth another pair) for a leg's failure before the first byte.

    Retried: connect errors and connect timeouts, resets, a worker's 5xx (or 408/429): nothing
    was sent and another pair can serve. Not retried: first-byte and between-chunk timeouts (the
    worker may still be computing; a retry would double the wait the timeout bounds) and a
    worker's 4xx (the worker answered: the request is bad anywhere).
    """
    if isinstance(exc, UpstreamTimeout):
        return True, exc.phase == "connect"  # nothing was sent on a connect timeout
    if isinstance(exc, UpstreamError | UpstreamFailed):
        return True, True
    return False, False
