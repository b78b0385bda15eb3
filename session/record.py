"""The session record and the facts a turn commits to it.

A session's block chain is kept compact: not every block hash, but one *checkpoint* per message
boundary (message count, token count, a digest of the messages so far, and the chain hash of the
last full block), plus the tip's unfinished block. That is enough to continue hashing a turn from
where the last one ended, and to find where a rewritten history first differs.
"""

from __future__ import annotations

import struct
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

_CHECKPOINT = struct.Struct("<II8s16s")
CHECKPOINT_BYTES = _CHECKPOINT.size


def pack_tokens(tokens: Sequence[int]) -> bytes:
    """The tip's unfinished block, as little-endian uint32 (the chain hash's own encoding)."""
    return array("I", tokens).tobytes()


def unpack_tokens(raw: bytes) -> list[int]:
    out = array("I")
    out.frombytes(raw)
    return out.tolist()


@dataclass(frozen=True, slots=True)
class Checkpoint:
    messages: int
    """Messages before this boundary."""
    tokens: int
    """Prompt tokens before this boundary (tools preamble included)."""
    digest: bytes
    """8-byte digest of the canonical messages JSON up to this boundary (salted)."""
    block_hash: bytes
    """Chain hash of the last full block at or before `tokens` (the root if none)."""

    def pack(self) -> bytes:
        return _CHECKPOINT.pack(self.messages, self.tokens, self.digest, self.block_hash)


def unpack_checkpoints(raw: bytes) -> Iterator[Checkpoint]:
    for fields in _CHECKPOINT.iter_unpack(raw):
        yield Checkpoint(*fields)


def thin_checkpoints(raw: bytes, limit: int) -> bytes:
    """At most `limit` checkpoints: drop every other one of the older half until it fits.

    The newest half stays exact (divergence is usually recent); older rewrites are located
    less precisely, never wrongly.
    """
    count = len(raw) // CHECKPOINT_BYTES
    while count > limit:
        keep_new = limit // 2
        old = raw[: (count - keep_new) * CHECKPOINT_BYTES]
        new = raw[(count - keep_new) * CHECKPOINT_BYTES :]
        old = b"".join(
            old[i : i + CHECKPOINT_BYTES] for i in range(0, len(old), 2 * CHECKPOINT_BYTES)
        )
        raw = old + new
        count = len(raw) // CHECKPOINT_BYTES
    return raw


@dataclass(frozen=True, slots=True)
class ChainTip:
    """Where the session's last prompt ended (before the assistant's opening)."""

    messages: int
    messages_bytes: int
    """Length of the canonical messages JSON up to the tip, the opening `[` included."""
    digest: bytes
    """16-byte digest of the canonical messages JSON up to the tip (salted): the tip's key."""
    tokens: int
    block_hash: bytes
    """Chain hash of the last full block."""
    pending: bytes
    """Packed tokens after the last full block, up to the tip (fewer than a block)."""


@dataclass(frozen=True, slots=True)
class TurnFacts:
    hit_tokens: int
    append_tokens: int
    output_tokens: int
    ttft_s: float | None
    tpot_s: float | None
    at: float
    """Unix time the turn ended."""


@dataclass(slots=True)
class SessionRecord:
    id: str
    tenant: str
    model: str
    created: float
    last_seen: float
    turns: int
    prompt_tokens: int
    """Prompt tokens of the last turn."""
    output_tokens: int
    """Output tokens of the last turn."""
    chars: int
    """Characters of message content hashed so far, for the tokens-per-character ratio."""
    hashed_tokens: int
    """Tokens rendered from that content."""
    last_prefill: str | None
    last_decode: str | None
    parent: str | None
    """The session this one forked from, when it was inferred as a fork."""
    tip: ChainTip
    checkpoints: bytes
    """Packed `Checkpoint`s, oldest first; boundary 0 (after the tools preamble) first."""
    recent: tuple[TurnFacts, ...]
    """Facts of the most recent turns, oldest first (bounded by the store)."""

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.output_tokens

    @property
    def tokens_per_char(self) -> float | None:
        return self.hashed_tokens / self.chars if self.chars else None

    def checkpoint_list(self) -> list[Checkpoint]:
        return list(unpack_checkpoints(self.checkpoints))


@dataclass(frozen=True, slots=True)
class TurnCommit:
    """Everything one finished turn changes, applied atomically by the store."""

    tenant: str
    session_id: str
    model: str
    parent: str | None
    tip: ChainTip
    checkpoints: bytes
    replaced_tip: bytes | None
    """The tip digest this turn started from; its index entry is dropped if it changed."""
    root: bytes
    """Digest of the prompt's first message: sessions sharing it are fork candidates."""
    prompt_tokens: int
    output_tokens: int
    chars: int
    hashed_tokens: int
    prefill: str | None
    decode: str | None
    facts: TurnFacts


@dataclass(frozen=True, slots=True)
class Resolution:
    """What a store knows about a new turn before it is hashed."""

    record: SessionRecord | None = None
    """The named session; or, unnamed, the session whose tip the prompt extends."""
    tip_index: int | None = None
    """Which of the offered tip digests matched (unnamed turns only)."""
    related: tuple[SessionRecord, ...] = ()
    """Without a record: recent sessions whose prompts began with the same first message."""
