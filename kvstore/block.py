"""The KV block value: a header naming the block and a checksum, then the (scaled) KV bytes.

A block holds `tokens × kv_bytes_per_token` bytes on a real engine. Simulated workers store that
size divided by a scale factor (the modelled size drives time, the scaled size is what moves), so
a laptop can hold thousands of sessions and still move real bytes. The checksum covers the header
and the payload, and the header repeats the block's key, so a corrupt, truncated or misplaced value
is caught by whoever reads it.

Layout (little-endian): magic `DPKV` | version u8 | pad | tokens u16 | payload length u32 |
key 16 B | xxh3-64 checksum u64 | payload.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

from xxhash import xxh3_64

from kvstore.block_key import KEY_BYTES
from kvstore.errors import CorruptBlock

MAGIC = b"DPKV"
VERSION = 1
_HEADER = struct.Struct("<4sBxHI16sQ")
HEADER_BYTES = _HEADER.size
_SUMMED = HEADER_BYTES - 8
"""The checksum covers the header up to itself, then the payload."""


@dataclass(frozen=True, slots=True)
class BlockShape:
    """How big a block is: modelled (drives time) and stored (what really moves)."""

    block_tokens: int
    kv_bytes_per_token: float
    scale: float = 256.0
    """Stored bytes = modelled bytes / scale (at least one byte per token)."""

    def __post_init__(self) -> None:
        if self.block_tokens <= 0 or self.kv_bytes_per_token <= 0 or self.scale < 1:
            raise ValueError("block_tokens and kv_bytes_per_token must be positive, scale >= 1")

    @property
    def modelled_bytes(self) -> float:
        return self.block_tokens * self.kv_bytes_per_token

    @property
    def payload_bytes(self) -> int:
        return max(self.block_tokens, math.ceil(self.modelled_bytes / self.scale))

    @property
    def stored_bytes(self) -> int:
        return HEADER_BYTES + self.payload_bytes


def encode_block(key: bytes, tokens: int, payload_bytes: int) -> bytes:
    """A block value whose payload is derived from its key (any bytes would do; these are cheap
    and differ per block, so a value stored under the wrong key fails its check)."""
    if len(key) != KEY_BYTES:
        raise ValueError(f"a block key is {KEY_BYTES} bytes, not {len(key)}")
    payload = (key * (payload_bytes // KEY_BYTES + 1))[:payload_bytes]
    head = _HEADER.pack(MAGIC, VERSION, tokens, payload_bytes, key, 0)[:_SUMMED]
    summed = xxh3_64(head)
    summed.update(payload)
    checksum = summed.intdigest()
    return head + checksum.to_bytes(8, "little") + payload


def verify_block(key: bytes, value: bytes) -> int:
    """The block's token count if `value` is an intact block stored under `key`."""
    if len(value) < HEADER_BYTES:
        raise CorruptBlock(key, f"{len(value)} bytes is shorter than a block header")
    magic, version, tokens, length, stored_key, checksum = _HEADER.unpack_from(value)
    if magic != MAGIC or version != VERSION:
        raise CorruptBlock(key, "not a dualpath KV block")
    if stored_key != key:
        raise CorruptBlock(key, "the value belongs to another block")
    if len(value) != HEADER_BYTES + length:
        raise CorruptBlock(
            key, f"payload is {len(value) - HEADER_BYTES} bytes, header says {length}"
        )
    view = memoryview(value)
    summed = xxh3_64(view[:_SUMMED])
    summed.update(view[HEADER_BYTES:])
    if summed.intdigest() != checksum:
        raise CorruptBlock(key, "checksum mismatch")
    return int(tokens)
