"""Block keys: a prompt's tokens cut into blocks and chain-hashed.

A block's key covers its parent's key and its own tokens (xxh3-128 over the parent digest and the
tokens as little-endian uint32), so equal keys mean equal prefixes. The chain's root is salted
with a server secret, the tenant and the model: two tenants never share a key, and one tenant
cannot compute another's. The gateway (through the session tracker) and the workers call these
same functions, so both name a block alike.
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence

from xxhash import xxh3_128_digest

DEFAULT_BLOCK_TOKENS = 64
"""SGLang's page size: the unit of hashing, storing and loading."""
KEY_BYTES = 16


def chain_root(secret: bytes, tenant: str, model: str) -> bytes:
    """The parent of a prompt's first block, unique to (secret, tenant, model)."""
    return xxh3_128_digest(
        b"dualpath-chain/v1\0" + secret + b"\0" + tenant.encode() + b"\0" + model.encode()
    )


def chain_blocks(parent: bytes, tokens: Sequence[int], block_tokens: int) -> list[bytes]:
    """The keys of the full blocks of `tokens`, continuing the chain from `parent`.

    A trailing partial block gets no key; the caller keeps its tokens for the next call.
    """
    raw = array("I", tokens).tobytes()
    step = block_tokens * 4
    out: list[bytes] = []
    for start in range(0, len(raw) - step + 1, step):
        parent = xxh3_128_digest(parent + raw[start : start + step])
        out.append(parent)
    return out
