"""Errors raised by the gateway, each rendered as an OpenAI-shaped error response.

    GatewayError
    ├── ConfigError                 bad settings or cluster file (startup, not HTTP)
    └── APIError                    anything answered to a client: status + OpenAI error body
        ├── InvalidRequest          400 invalid_request_error (bad JSON, wrong types, bad values)
        ├── ModelNotFound           404 model_not_found
        ├── PayloadTooLarge         413
        ├── UnsupportedMediaType    415
        ├── Overloaded              429 + Retry-After: the scheduler shed it (predicted wait)
        ├── NoHealthyWorker         503 + Retry-After (also: held past the hold timeout)
        └── UpstreamFailed          502/504: a worker failed or timed out

`engines` errors are translated into these in exactly one place, `gateway.pd_dispatch`.
"""

from __future__ import annotations

from typing import Any

import orjson


class GatewayError(Exception):
    """Base of every error raised by `gateway`."""


class ConfigError(GatewayError):
    pass


class APIError(GatewayError):
    status = 500
    type = "server_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def json_bytes(self) -> bytes:
        return orjson.dumps(self.body())


class InvalidRequest(APIError):
    status = 400
    type = "invalid_request_error"


class ModelNotFound(APIError):
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"


class NotFound(APIError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class MethodNotAllowed(APIError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"


class PayloadTooLarge(APIError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class UnsupportedMediaType(APIError):
    status = 415
    type = "invalid_request_error"
    code = "unsupported_media_type"


class RetryLater(APIError):
    """An error the client should retry after `retry_after_s` (sent as `Retry-After`)."""

    def __init__(self, message: str, *, retry_after_s: int) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after_s)})


class NoHealthyWorker(RetryLater):
    status = 503
    type = "service_unavailable"
    code = "no_healthy_worker"


class Overloaded(RetryLater):
    status = 429
    type = "rate_limit_error"
    code = "overloaded"


class UpstreamFailed(APIError):
    status = 502
    type = "upstream_error"
    code = "upstream_error"


class UpstreamTimedOut(UpstreamFailed):
    status = 504
    code = "upstream_timeout"
