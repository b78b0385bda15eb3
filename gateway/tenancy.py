"""Which tenant a request belongs to: one per API key.

Until keys are configured (the hardening issue binds keys to named tenants), each distinct bearer
key is its own tenant, named by a hash of the key so the key itself is never stored; requests
without a key share the `anonymous` tenant.
"""

from __future__ import annotations

from collections.abc import Mapping

from xxhash import xxh3_64_hexdigest

ANONYMOUS = "anonymous"


def tenant_of(headers: Mapping[str, str]) -> str:
    auth = headers.get("authorization", "")
    scheme, _, key = auth.partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key:
        return ANONYMOUS
    return "key-" + xxh3_64_hexdigest(key.encode())
