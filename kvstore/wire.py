"""The binary wire format of blocks over HTTP: keys, (key, value) items, and values.

Integers are little-endian u32; a key is 16 bytes; a missing value is the length 0xFFFFFFFF.
Used by the store server and its client, and by the workers' staging route (read path `de`).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from kvstore.block_key import KEY_BYTES

MISSING = 0xFFFFFFFF
_U32 = struct.Struct("<I")


class MalformedBody(ValueError):
    """A body that does not follow the wire format (answered with 400, or counted by a client)."""


def decode_keys(body: bytes) -> list[bytes]:
    if len(body) % KEY_BYTES:
        raise MalformedBody(f"{len(body)} bytes is not a whole number of {KEY_BYTES}-byte keys")
    return [body[i : i + KEY_BYTES] for i in range(0, len(body), KEY_BYTES)]


def encode_items(items: Sequence[tuple[bytes, bytes]]) -> bytes:
    parts: list[bytes] = []
    for key, value in items:
        parts += (key, _U32.pack(len(value)), value)
    return b"".join(parts)


def decode_items(body: bytes) -> list[tuple[bytes, bytes]]:
    items: list[tuple[bytes, bytes]] = []
    at, end = 0, len(body)
    while at < end:
        if end - at < KEY_BYTES + 4:
            raise MalformedBody(f"item {len(items)} is cut short in its header")
        (length,) = _U32.unpack_from(body, at + KEY_BYTES)
        start = at + KEY_BYTES + 4
        if start + length > end:
            raise MalformedBody(f"item {len(items)} says {length} bytes; {end - start} are left")
        items.append((body[at : at + KEY_BYTES], body[start : start + length]))
        at = start + length
    return items


def encode_values(values: Sequence[bytes | None]) -> bytes:
    parts: list[bytes] = []
    for value in values:
        if value is None:
            parts.append(_U32.pack(MISSING))
        else:
            parts += (_U32.pack(len(value)), value)
    return b"".join(parts)


def decode_values(body: bytes, count: int | None = None) -> list[bytes | None]:
    """`count` values (None: as many as the body holds)."""
    values: list[bytes | None] = []
    at, end = 0, len(body)
    while (at < end) if count is None else (len(values) < count):
        if end - at < 4:
            raise MalformedBody(f"value {len(values)} is cut short in its length")
        (length,) = _U32.unpack_from(body, at)
        at += 4
        if length == MISSING:
            values.append(None)
            continue
        if at + length > end:
            raise MalformedBody(f"value {len(values)} says {length} bytes; {end - at} are left")
        values.append(body[at : at + length])
        at += length
    if at != end:
        raise MalformedBody(f"{end - at} bytes after {len(values)} values")
    return values
