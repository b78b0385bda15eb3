"""Prefix block hashes: a prompt's tokens cut into blocks and chain-hashed.

A block's hash covers its parent's hash and its own tokens (xxh3-128 over the parent digest and
the tokens as little-endian uint32), so equal hashes mean equal prefixes. The chain's root is
salted with a server secret, the tenant and the model: two tenants never share a hash, and one
tenant cannot compute another's.
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence

from xxhash import xxh3_128_digest

DEFAULT_BLOCK_TOKENS = 64
"""SGLang's page size: the unit of hashing, storing and loading."""
HASH_BYTES = 16


def chain_root(secret: bytes, tenant: str, model: str) -> bytes:
    """The parent of a prompt's first block, unique to (secret, tenant, model)."""
    return xxh3_128_digest(
        b"dualpath-chain/v1\0" + secret + b"\0" + tenant.encode() + b"\0" + model.encode()
    )


def pack_tokens(tokens: Sequence[int]) -> bytes:
    return array("I", tokens).tobytes()


def unpack_tokens(raw: bytes) -> list[int]:
    out = array("I")
    out.frombytes(raw)
    return out.tolist()


def chain_blocks(parent: bytes, tokens: Sequence[int], block_tokens: int) -> list[bytes]:
    """The hashes of the full blocks of `tokens`, continuing the chain from `parent`.

    A trailing partial block gets no hash; the caller keeps its tokens for the next call.
    """
    raw = pack_tokens(tokens)
    step = block_tokens * 4
    out: list[bytes] = []
    for start in range(0, len(raw) - step + 1, step):
        parent = xxh3_128_digest(parent + raw[start : start + step])
        out.append(parent)
    return out
