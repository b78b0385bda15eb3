"""Which tenant a request belongs to.

With API keys configured (`gateway/api_keys.py`), the tenant is the one the caller's key is bound
to. Without, each distinct bearer key is its own tenant, named by a hash of the key so the key
itself is never stored; requests without a key share the `anonymous` tenant.

`gateway.auth` decides once, at the edge, and hands the answer on in `TENANT_HEADER` (after
dropping any copy the client sent, and the `Authorization` header itself): the routes, the
session step and the scheduler read it through `tenant_of`.
"""

from __future__ import annotations

from collections.abc import Mapping

from xxhash import xxh3_64_hexdigest

ANONYMOUS = "anonymous"
TENANT_HEADER = "x-dualpath-tenant"
"""Set only by `gateway.auth`; a client cannot choose its tenant with it."""


def bearer_key(authorization: str) -> str | None:
    """The key of an `Authorization: Bearer KEY` header value, or None."""
    scheme, _, key = authorization.partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key:
        return None
    return key


def open_tenant(authorization: str) -> str:
    """The tenant when no keys are configured: one per distinct key, hashed."""
    key = bearer_key(authorization)
    return ANONYMOUS if key is None else "key-" + xxh3_64_hexdigest(key.encode())


def tenant_of(headers: Mapping[str, str]) -> str:
    tenant = headers.get(TENANT_HEADER)
    if tenant:
        return tenant
    return open_tenant(headers.get("authorization", ""))
