"""Errors raised by the gateway, each rendered as an OpenAI-shaped error response.

    GatewayError
    ├── ConfigError                 bad settings or cluster file (startup, not HTTP)
    ├── LimiterUnavailable          the shared rate-limit store failed (the local one takes over)
    └── APIError                    anything answered to a client: status + OpenAI error body
        ├── InvalidRequest          400 invalid_request_error (bad JSON, wrong types, bad values)
        ├── InvalidApiKey           401 invalid_api_key + WWW-Authenticate (missing or wrong key)
        ├── PermissionDenied        403 permission_denied (an admin route, a non-admin key)
        ├── ModelNotFound           404 model_not_found
        ├── PayloadTooLarge         413
        ├── UnsupportedMediaType    415
        ├── HeadersTooLarge         431 (sent by `gateway.http_limits`, below the app)
        ├── Overloaded              429 + Retry-After: the scheduler shed it (predicted wait)
        ├── RateLimited             429 + Retry-After: the key is past its per-minute limit
        ├── NoHealthyWorker         503 + Retry-After (also: held past the hold timeout)
        ├── UpstreamFailed          502/504: a worker failed or timed out
        ├── ClientClosedRequest     499: the client hung up before its answer began
        └── WorkerConflict          409 worker_exists (`POST /workers` of a known URL)

`engines` errors are translated into these in exactly one place, `gateway.upstream_errors`.
"""

from __future__ import annotations

from typing import Any

import orjson


class GatewayError(Exception):
    """Base of every error raised by `gateway`."""


class ConfigError(GatewayError):
    pass


class LimiterUnavailable(GatewayError):
    """Redis did not answer a rate-limit call in time; never answered to a client."""


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


class InvalidApiKey(APIError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"

    def __init__(self, message: str, *, challenge: str = "Bearer") -> None:
        super().__init__(message, headers={"WWW-Authenticate": challenge})


class PermissionDenied(APIError):
    status = 403
    type = "permission_error"
    code = "permission_denied"


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


class HeadersTooLarge(APIError):
    status = 431
    type = "invalid_request_error"
    code = "request_header_fields_too_large"


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


class RateLimited(RetryLater):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class UpstreamFailed(APIError):
    status = 502
    type = "upstream_error"
    code = "upstream_error"


class UpstreamTimedOut(UpstreamFailed):
    status = 504
    code = "upstream_timeout"


class ClientClosedRequest(APIError):
    """The client hung up before its answer began (nginx's 499; nobody reads the body)."""

    status = 499
    type = "invalid_request_error"
    code = "client_closed_request"


class WorkerConflict(APIError):
    status = 409
    type = "invalid_request_error"
    code = "worker_exists"
