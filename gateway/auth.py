"""Who is calling: API keys checked at the edge, admin routes guarded, rate limits charged.

    AuthMiddleware    pure ASGI, every HTTP request:
                      1. drops the `Authorization` header and any client-sent tenant header, so
                         the key goes no further and no client can name its own tenant;
                      2. open paths (probes, /metrics, the dashboard, /openapi.json) pass;
                      3. keys configured: a missing or unknown key → 401, a known key is charged
                         one request (429 + Retry-After past its requests_per_min) and the request
                         goes on with its tenant (`tenancy.TENANT_HEADER`) and its `Principal`;
                         no keys: the tenant is `tenancy.open_tenant`'s and nothing is checked.
    require_admin     FastAPI dependency of the admin routers: a non-admin key → 403.
    admit             called by the generation routes once the prompt is counted: charges the
                      key's tokens_per_min, and puts the request in its tenant's engine-cache
                      namespace (SGLang's `extra_key`): SGLang otherwise shares its radix cache
                      across all requests, and another tenant's prefix would come back as a
                      faster first token and a `cached_tokens` count.

Token cost of a request: its prompt tokens (exact for chat turns, from the session step; body
bytes / 4 otherwise) plus the output it may produce: `max_tokens` (or `max_completion_tokens`)
times the batch size when the client sets it, else the scheduler's expected output. The whole
amount is reserved up front and never refunded, as OpenAI counts TPM.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.api_keys import KeyRing
from gateway.errors import APIError, InvalidApiKey, PermissionDenied, RateLimited
from gateway.rate_limits import FailoverLimiter, Limiter, LocalLimiter
from gateway.request_parsing import ParsedRequest
from gateway.scheduler.request import SchedRequest
from gateway.settings import GatewaySettings, RateLimitConfig
from gateway.tenancy import TENANT_HEADER, bearer_key, open_tenant

__all__ = ["Auth", "AuthMiddleware", "Principal", "admit", "require_admin"]

OPEN_PATHS = frozenset({"/health", "/ready", "/metrics", "/dashboard", "/openapi.json"})
"""Never need a key: liveness/readiness probes and Prometheus scrapes carry none, and none of
these shows a tenant's data (the dashboard and /metrics show cluster-wide aggregates)."""
OPEN_PREFIXES = ("/dashboard/",)
MAX_KEY_CHARS = 1024
"""A longer bearer value is refused unhashed."""
_PRINCIPAL = "dualpath.principal"
_MISSING_KEY = "Missing API key: send it as 'Authorization: Bearer YOUR_KEY'"
_DROPPED = {b"authorization", TENANT_HEADER.encode()}


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller: its key's tenant, rights and resolved limits (0 = unlimited)."""

    tenant: str
    key_id: str
    admin: bool
    requests_per_min: int
    tokens_per_min: int
    cache_namespace: str = ""
    """Its tenant's engine-cache namespace (`extra_key`), salted with the gateway's secret."""


def principal_of(scope: Scope) -> Principal | None:
    """The request's caller; None when no keys are configured (or on an open path)."""
    principal = scope.get("state", {}).get(_PRINCIPAL)
    return principal if isinstance(principal, Principal) else None


class Auth:
    """The configured keys and the limiter their buckets live in."""

    def __init__(
        self, keys: KeyRing, limiter: Limiter, defaults: RateLimitConfig, secret: str = ""
    ) -> None:
        self.keys = keys
        self.limiter = limiter
        self.defaults = defaults
        self._secret = secret

    @classmethod
    def from_settings(cls, settings: GatewaySettings) -> Auth:
        config = settings.rate_limits
        keys = KeyRing(settings.api_keys)
        limiter: Limiter = LocalLimiter(config.max_buckets)
        if keys and settings.sessions.redis_url:
            from gateway.redis_rate_limits import RedisLimiter

            shared = RedisLimiter(settings.sessions.redis_url, timeout_s=config.redis_timeout_s)
            limiter = FailoverLimiter(
                shared, LocalLimiter(config.max_buckets), retry_interval_s=config.redis_retry_s
            )
        return cls(keys, limiter, config, settings.sessions.secret)

    @property
    def enabled(self) -> bool:
        return bool(self.keys)

    def authenticate(self, authorization: str) -> Principal:
        key = bearer_key(authorization)
        if key is None:
            raise InvalidApiKey(_MISSING_KEY)
        entry = self.keys.find(key) if len(key) <= MAX_KEY_CHARS else None
        if entry is None:  # the message never echoes the key
            raise InvalidApiKey(
                "Incorrect API key provided", challenge='Bearer error="invalid_token"'
            )
        rpm, tpm = entry.requests_per_min, entry.tokens_per_min
        return Principal(
            tenant=entry.tenant,
            key_id=entry.key_id,
            admin=entry.admin,
            requests_per_min=self.defaults.requests_per_min if rpm is None else rpm,
            tokens_per_min=self.defaults.tokens_per_min if tpm is None else tpm,
            cache_namespace=self._namespace(entry.tenant),
        )

    def _namespace(self, tenant: str) -> str:
        salted = f"dualpath-cache\0{self._secret}\0{tenant}".encode()
        return hashlib.sha256(salted).hexdigest()[:32]

    async def _charge(self, kind: str, principal: Principal, cost: int, per_min: int) -> None:
        if per_min <= 0 or cost <= 0:
            return
        wait_s = await self.limiter.acquire(f"{kind}:{principal.key_id}", cost, per_min)
        if wait_s > 0:
            unit = "requests" if kind == "r" else "tokens"
            raise RateLimited(
                f"Rate limit reached for this API key on {unit} per minute (limit {per_min}, "
                f"requested {cost}); try again in {wait_s:.1f}s",
                retry_after_s=max(1, math.ceil(wait_s)),
            )

    async def charge_request(self, principal: Principal) -> None:
        await self._charge("r", principal, 1, principal.requests_per_min)

    async def charge_tokens(self, principal: Principal, tokens: int) -> None:
        await self._charge("t", principal, tokens, principal.tokens_per_min)

    async def close(self) -> None:
        await self.limiter.close()


def _is_open(path: str) -> bool:
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


class AuthMiddleware:
    """Pure ASGI: authenticates before any body is read, so a refused caller costs little."""

    def __init__(self, app: ASGIApp, auth: Auth) -> None:
        self.app = app
        self.auth = auth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        raw: list[tuple[bytes, bytes]] = scope["headers"]
        authorization = next((v for k, v in raw if k == b"authorization"), b"")
        kept = [(k, v) for k, v in raw if k not in _DROPPED]
        # In place, not a copy: outer middleware (the request counter) reads what the router
        # later writes into this same scope.
        scope["headers"] = kept
        if not self.auth.enabled:
            tenant = open_tenant(authorization.decode("latin-1"))
            kept.append((TENANT_HEADER.encode(), tenant.encode("latin-1")))
        elif not _is_open(scope["path"]):
            try:
                principal = self.auth.authenticate(authorization.decode("latin-1"))
                await self.auth.charge_request(principal)
            except APIError as err:
                await _respond(err, scope, receive, send)
                return
            kept.append((TENANT_HEADER.encode(), principal.tenant.encode("latin-1")))
            scope.setdefault("state", {})[_PRINCIPAL] = principal
        await self.app(scope, receive, send)


async def _respond(err: APIError, scope: Scope, receive: Receive, send: Send) -> None:
    response = Response(
        err.json_bytes(), status_code=err.status, headers=err.headers, media_type="application/json"
    )
    await response(scope, receive, send)


async def require_admin(request: Request) -> None:
    """Dependency of admin routers: with keys configured, only an admin key passes."""
    auth: Auth | None = getattr(request.app.state, "auth", None)
    if auth is None or not auth.enabled:
        return
    principal = principal_of(request.scope)
    if principal is None:  # only if the middleware was left out: fail closed
        raise InvalidApiKey(_MISSING_KEY)
    if not principal.admin:
        raise PermissionDenied("This route needs an admin API key")


def reserved_tokens(body: dict[str, Any], batch_size: int, wanted: SchedRequest) -> int:
    """Prompt tokens plus the output reserved for the request (see the module docstring)."""
    prompt = wanted.hit_tokens + wanted.append_tokens
    for name in ("max_completion_tokens", "max_tokens"):
        cap = body.get(name)
        if isinstance(cap, int) and not isinstance(cap, bool) and cap >= 0:
            return prompt + cap * batch_size
    return prompt + wanted.output_tokens


async def admit(request: Request, parsed: ParsedRequest, wanted: SchedRequest) -> None:
    """The generation routes' half of the edge: 429 past the key's tokens_per_min, then the
    tenant's engine-cache namespace (kept in front of any `extra_key` the client sent)."""
    auth: Auth | None = getattr(request.app.state, "auth", None)
    principal = principal_of(request.scope)
    if auth is None or principal is None:  # no keys configured: requests go as they came
        return
    await auth.charge_tokens(principal, reserved_tokens(parsed.body, parsed.batch_size, wanted))
    own = parsed.body.get("extra_key")
    parsed.body["extra_key"] = principal.cache_namespace + (own if isinstance(own, str) else "")
