"""Digests of a chat prompt's messages, as prefixes of their canonical JSON.

The canonical JSON of a message list is `orjson.dumps(messages)`: `[m1,m2,…]`. Message `j` ends at
byte `E_j` (`E_0 = 1`, just the `[`), and the digest of everything up to `E_j` (salted with the
chain root and the tools) names the conversation so far. One streaming pass over the prefix
gives every digest a turn needs, at memory speed; only the messages a turn appends are
serialised on their own, so a turn costs O(append) Python work plus one fast hash of the prefix.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson
from xxhash import xxh3_128

DIGEST_BYTES = 16
CHECKPOINT_DIGEST_BYTES = 8


def message_ends(messages: Sequence[Mapping[str, Any]], canonical: bytes, first: int) -> list[int]:
    """`[E_first, …, E_n]`, found by walking back from the end over messages `first+1…n`."""
    n = len(messages)
    ends = [0] * (n - first + 1)
    end = len(canonical) - 1  # the closing bracket
    ends[-1] = end
    for j in range(n, first, -1):
        end -= len(orjson.dumps(messages[j - 1])) + 1  # the message and the `,` or `[` before it
        ends[j - 1 - first] = end
    if first == 0:
        ends[0] = 1
    return ends


def first_message_end(messages: Sequence[Mapping[str, Any]]) -> int:
    return 1 + len(orjson.dumps(messages[0])) if messages else 1


def prefix_digests(seed: bytes, canonical: bytes, ends: Sequence[int]) -> list[bytes]:
    """The digest of `seed + canonical[:e]` for each `e` of the ascending `ends`, in one pass."""
    h = xxh3_128(seed)
    view = memoryview(canonical)
    pos = 0
    out: list[bytes] = []
    for end in ends:
        h.update(view[pos:end])
        pos = end
        out.append(h.digest())
    return out


def content_chars(message: Mapping[str, Any]) -> int:
    """Characters of a message's text content, for the tokens-per-character ratio."""
    content = message.get("content")
    if isinstance(content, str):
        return len(content)
    if isinstance(content, list):
        return sum(
            len(p["text"])
            for p in content
            if isinstance(p, Mapping) and isinstance(p.get("text"), str)
        )
    return 0


def checkpoint_digest(digest: bytes) -> bytes:
    """The shorter digest checkpoints keep: collisions only matter within one session."""
    return digest[:CHECKPOINT_DIGEST_BYTES]
