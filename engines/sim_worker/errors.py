"""Errors of the simulated worker.

    SimWorkerError
    ├── BadRequest          a request the worker rejects with 400 (SGLang's error shape)
    ├── QueueFull           the engine's waiting queue is full (503)
    ├── RequestAborted      /abort_request, a client disconnect or the prefill partner gave up
    └── RendezvousError     decode could not get its prefill's KV (timeout, prefill failure)

httpx errors of the decode→bootstrap call are translated in `rendezvous`, chained with `from`.
"""

from __future__ import annotations


class SimWorkerError(Exception):
    status_code = 500
    err_type = "InternalServerError"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(SimWorkerError):
    status_code = 400
    err_type = "BadRequestError"


class QueueFull(SimWorkerError):
    status_code = 503
    err_type = "ServiceUnavailableError"


class RequestAborted(SimWorkerError):
    status_code = 499
    err_type = "AbortedError"


class RendezvousError(SimWorkerError):
    status_code = 500
    err_type = "InternalServerError"
