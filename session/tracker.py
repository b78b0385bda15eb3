"""The session tracker: which session a turn belongs to, and how much of its prompt is a hit.

`begin` identifies the session (named, or inferred from the longest known prompt it extends),
renders and hashes only what is new since the session's tip, and returns a `TurnPlan`; `finish`
commits the turn to the store once it has ended. A named session whose history was rewritten
restarts from the last checkpoint that still matches; an unnamed prompt that matches no tip but
shares more than its system prompt with a known session becomes a *fork* of it. Either way the
shared part is a hit and is not hashed again.

The cycle per turn: one store round trip in `begin`, one in `finish`.
"""

from __future__ import annotations

import bisect
import struct
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from session.identity import ClaimedSession
from session.message_digest import (
    checkpoint_digest,
    content_chars,
    first_message_end,
    message_ends,
    prefix_digests,
)
from session.record import (
    CHECKPOINT_BYTES,
    ChainTip,
    Checkpoint,
    SessionRecord,
    TurnCommit,
    TurnFacts,
    pack_tokens,
    unpack_tokens,
)
from session.store import SessionStore

SYSTEM_ROLES = frozenset({"system", "developer"})
MAX_PROBE_POINTS = 64
"""Block keys a plan offers for checking its hit against the KV store (one batched look-up)."""
_CHECKPOINT_TOKENS = struct.Struct("<4xI")
"""A packed checkpoint's token count (`session.record`); its block hash is its last 16 bytes."""
_HASH_BYTES = 16


class PromptRenderer(Protocol):
    """The chat template and tokenizer, message by message (the gateway wires in the engines')."""

    def preamble_tokens(self, tools: Sequence[Any] | None) -> list[int]: ...

    def message_tokens(self, message: Mapping[str, Any]) -> list[int]: ...

    def generation_prompt_tokens(self) -> list[int]: ...


class BlockChain(Protocol):
    """The block-key chain hash (the gateway wires in `kvstore.block_key`, which the workers use
    too, so a session's blocks and the store's keys are one name)."""

    def chain_root(self, secret: bytes, tenant: str, model: str) -> bytes: ...

    def chain_blocks(
        self, parent: bytes, tokens: Sequence[int], block_tokens: int
    ) -> list[bytes]: ...


@dataclass(frozen=True, slots=True)
class TrackerConfig:
    block_tokens: int = 64
    """SGLang's page size: the unit of hashing, storing and loading."""
    tip_candidates: int = 8
    """Unnamed turns: how many trailing message boundaries may be where the last turn ended."""
    secret: bytes = b""
    """Server secret mixed into every chain root, so hashes cannot be computed outside."""


@dataclass(frozen=True, slots=True)
class Prompt:
    tenant: str
    model: str
    claimed: ClaimedSession | None
    messages: Sequence[Mapping[str, Any]]
    canonical: bytes
    """`orjson.dumps(messages)`; the gateway serialises once and sends the same bytes on."""
    tools: Sequence[Any] | None = None


@dataclass(frozen=True, slots=True)
class TurnOutcome:
    output_tokens: int
    ttft_s: float | None
    tpot_s: float | None
    prefill: str | None
    decode: str | None
    at: float
    """Unix time the turn ended."""


@dataclass(frozen=True, slots=True)
class TurnPlan:
    session_id: str
    source: str
    """`header`, `agent-header`, `metadata`, `user`, `inferred`, `fork` or `new`."""
    parent: str | None
    prompt_tokens: int
    hit_tokens: int
    first_new_block: int
    """Chain index of `new_blocks[0]`: the blocks before it were hashed by earlier turns."""
    new_blocks: tuple[bytes, ...]
    tenant: str
    model: str
    expected_output_tokens: int | None
    """Mean output of the session's recent turns (None for a new session): for scheduling."""
    block_tokens: int
    _tip: ChainTip = field(repr=False)
    _checkpoints: bytes = field(repr=False)
    _replaced_tip: bytes | None = field(repr=False)
    _root: bytes = field(repr=False)
    _chars: int = field(repr=False)
    _hashed_tokens: int = field(repr=False)

    @property
    def append_tokens(self) -> int:
        return self.prompt_tokens - self.hit_tokens

    def probe_points(self, limit: int = MAX_PROBE_POINTS) -> list[tuple[int, bytes]]:
        """(block index, block key) pairs inside the hit whose keys this plan knows, by index.

        The keys are the chain's, so the workers store those very blocks under them: each kept
        checkpoint's block hash (block `tokens // block_tokens - 1`; the chain root, index -1, is
        no block) and every new block. Past `limit` the newest half stays exact (the tail of a
        chain is what eviction takes first, and the last hit block matters most) and the older
        ones are thinned evenly. Checkpoints are read in place: a session keeps thousands, and
        this runs on every turn.
        """
        if limit <= 0:
            return []
        block = self.block_tokens
        hit_blocks = self.hit_tokens // block
        new = [
            (self.first_new_block + i, key)
            for i, key in enumerate(self.new_blocks[: max(hit_blocks - self.first_new_block, 0)])
        ]
        raw = self._checkpoints
        count = len(raw) // CHECKPOINT_BYTES

        def index_at(position: int) -> int:
            (tokens,) = _CHECKPOINT_TOKENS.unpack_from(raw, position * CHECKPOINT_BYTES)
            return int(tokens) // block - 1

        # Checkpoints are in chain order (block indexes never decrease). Those at index -1 name
        # the root, and those the new blocks cover add nothing.
        first = bisect.bisect_left(range(count), 0, key=index_at)
        end = bisect.bisect_left(range(count), min(hit_blocks, self.first_new_block), key=index_at)
        end = max(end, first)
        total = end - first + len(new)
        newest = min(total, limit - limit // 2)
        older = min(total - newest, limit // 2)
        picks = [(total - newest) * i // older for i in range(older)]  # evenly, oldest first
        points: dict[int, bytes] = {}
        for j in [*picks, *range(total - newest, total)]:
            if j >= end - first:
                index, key = new[j - (end - first)]
            else:
                position = first + j
                index = index_at(position)
                stop = (position + 1) * CHECKPOINT_BYTES
                key = raw[stop - _HASH_BYTES : stop]
            points[index] = key  # consecutive checkpoints can share a block: one probe
        return sorted(points.items())

    def commit(self, outcome: TurnOutcome) -> TurnCommit:
        facts = TurnFacts(
            self.hit_tokens,
            self.append_tokens,
            outcome.output_tokens,
            outcome.ttft_s,
            outcome.tpot_s,
            outcome.at,
        )
        return TurnCommit(
            tenant=self.tenant,
            session_id=self.session_id,
            model=self.model,
            parent=self.parent,
            tip=self._tip,
            checkpoints=self._checkpoints,
            replaced_tip=self._replaced_tip,
            root=self._root,
            prompt_tokens=self.prompt_tokens,
            output_tokens=outcome.output_tokens,
            chars=self._chars,
            hashed_tokens=self._hashed_tokens,
            prefill=outcome.prefill,
            decode=outcome.decode,
            facts=facts,
        )


@dataclass(frozen=True, slots=True)
class _Start:
    """Where hashing resumes: a message boundary whose chain state is known."""

    messages: int
    tokens: int
    block_hash: bytes
    pending: list[int]
    checkpoints: bytes
    """The checkpoints kept up to and including this boundary."""
    common_tokens: int
    """Tokens shared with what the engines already computed for this session."""
    from_scratch: bool = False
    """Nothing known: the tools preamble is rendered and checkpoint 0 laid down."""
    rendered: tuple[list[int], ...] = ()
    """Tokens of the messages right after this boundary that were already rendered."""


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class SessionTracker:
    def __init__(
        self,
        store: SessionStore,
        renderer: PromptRenderer,
        chain: BlockChain,
        config: TrackerConfig | None = None,
        new_id: Callable[[], str] = lambda: "sess_" + uuid.uuid4().hex,
    ) -> None:
        self.store = store
        self._renderer = renderer
        self._chain = chain
        self.config = config or TrackerConfig()
        self._new_id = new_id

    async def begin(self, prompt: Prompt) -> TurnPlan:
        chain = self._chain.chain_root(self.config.secret, prompt.tenant, prompt.model)
        # Message digests are salted like the chain, and cover the tools the prompt starts with.
        seed = chain + (orjson.dumps(list(prompt.tools)) if prompt.tools else b"")
        messages, canonical = prompt.messages, prompt.canonical
        n = len(messages)
        root = prefix_digests(seed, canonical, [first_message_end(messages)])[0]
        if prompt.claimed is not None:
            res = await self.store.resolve(prompt.tenant, prompt.claimed.id, (), root)
            record = res.record
            k = record.tip.messages if record is not None else n + 1
            ends = message_ends(messages, canonical, k) if k <= n else []
            digests = prefix_digests(seed, canonical, ends)
            session_id, source = prompt.claimed.id, prompt.claimed.source
        else:
            first = max(1, n - self.config.tip_candidates)
            ends = message_ends(messages, canonical, first) if n else []
            digests = prefix_digests(seed, canonical, ends)
            res = await self.store.resolve(prompt.tenant, None, digests[::-1], root)
            record = res.record
            if record is not None and res.tip_index is not None:
                k = n - res.tip_index
                ends, digests = ends[k - first :], digests[k - first :]
            session_id, source = "", "inferred"
        parent = None
        if record is not None and ends and digests[0] == record.tip.digest:
            start = self._from_tip(record, messages)
            session_id = record.id
        else:  # a rewritten history, a fork, or a new session
            candidates = (record,) if record is not None else res.related
            ends = message_ends(messages, canonical, 0)
            digests = prefix_digests(seed, canonical, ends)
            start, best = self._from_checkpoints(candidates, prompt, digests, chain)
            ends, digests = ends[start.messages :], digests[start.messages :]
            if prompt.claimed is None:
                shares_more = best is not None and start.messages > _system_prefix(messages)
                session_id = self._new_id()
                source = "fork" if shares_more else "new"
                parent = best.id if shares_more and best is not None else None
        return self._plan(prompt, session_id, source, parent, start, ends, digests, root, record)

    def _from_tip(self, record: SessionRecord, messages: Sequence[Mapping[str, Any]]) -> _Start:
        tip = record.tip
        common = tip.tokens
        gen = self._renderer.generation_prompt_tokens()
        rendered: tuple[list[int], ...] = ()
        if tip.messages < len(messages):
            following = messages[tip.messages]
            head = self._renderer.message_tokens(following)
            rendered = (head,)
            opening = _common_prefix(gen, head)
            common += opening
            # The assistant's reply the engines generated last turn comes back verbatim.
            if opening == len(gen) and following.get("role") == "assistant":
                common += min(record.output_tokens, len(head) - opening)
        else:  # the same prompt again (a retry)
            common += len(gen)
        return _Start(
            tip.messages,
            tip.tokens,
            tip.block_hash,
            unpack_tokens(tip.pending),
            record.checkpoints,
            common,
            rendered=rendered,
        )

    def _from_checkpoints(
        self,
        candidates: Sequence[SessionRecord],
        prompt: Prompt,
        digests: Sequence[bytes],
        chain: bytes,
    ) -> tuple[_Start, SessionRecord | None]:
        """The latest checkpoint of any candidate that the prompt still matches."""
        best: tuple[list[Checkpoint], SessionRecord] | None = None
        for record in candidates:
            if record.model != prompt.model:
                continue
            kept: list[Checkpoint] = []
            for cp in record.checkpoint_list():
                # Digests cover whole prefixes, so the first mismatch ends the match.
                at = cp.messages
                if at >= len(digests) or checkpoint_digest(digests[at]) != cp.digest:
                    break
                kept.append(cp)
            if kept and (best is None or kept[-1].tokens > best[0][-1].tokens):
                best = (kept, record)
        scratch = _Start(0, 0, chain, [], b"", 0, from_scratch=True)
        if best is None:
            return scratch, None
        kept, record = best
        cp = kept[-1]
        pending = self._pending_at(cp, kept, prompt.messages)
        if pending is None:
            return scratch, record
        points = b"".join(c.pack() for c in kept)
        return _Start(cp.messages, cp.tokens, cp.block_hash, pending, points, cp.tokens), record

    def _pending_at(
        self, cp: Checkpoint, kept: Sequence[Checkpoint], messages: Sequence[Mapping[str, Any]]
    ) -> list[int] | None:
        """The tokens of `cp`'s unfinished block, re-rendered from an earlier boundary."""
        block = self.config.block_tokens
        block_start = cp.tokens // block * block
        base = next((c for c in reversed(kept) if c.tokens <= block_start), None)
        if base is None:
            return None  # the block starts inside the tools preamble: hash from scratch
        tokens: list[int] = []
        for m in messages[base.messages : cp.messages]:
            tokens += self._renderer.message_tokens(m)
        return tokens[block_start - base.tokens :]

    def _plan(
        self,
        prompt: Prompt,
        session_id: str,
        source: str,
        parent: str | None,
        start: _Start,
        ends: Sequence[int],
        digests: Sequence[bytes],
        root: bytes,
        record: SessionRecord | None,
    ) -> TurnPlan:
        """Render and hash everything after `start`, and lay out the new tip and checkpoints."""
        block = self.config.block_tokens
        renderer = self._renderer
        messages = prompt.messages
        head = renderer.preamble_tokens(prompt.tools) if start.from_scratch else []
        per_message = [*start.rendered]
        per_message += [
            renderer.message_tokens(m) for m in messages[start.messages + len(per_message) :]
        ]
        gen = renderer.generation_prompt_tokens()
        stream = start.pending + head
        for toks in per_message:
            stream += toks
        body_end = len(stream)  # the tip: before the assistant's opening
        stream += gen
        base_block = start.tokens // block
        base_tokens = base_block * block
        blocks = self._chain.chain_blocks(start.block_hash, stream, block)

        def hash_at(tokens: int) -> bytes:
            count = tokens // block - base_block
            return start.block_hash if count == 0 else blocks[count - 1]

        def point(j: int, tokens: int) -> bytes:
            at = start.messages + j
            return Checkpoint(at, tokens, checkpoint_digest(digests[j]), hash_at(tokens)).pack()

        points = [start.checkpoints]
        tokens = start.tokens + len(head)
        if start.from_scratch:
            points.append(point(0, tokens))
        for j, toks in enumerate(per_message, start=1):
            tokens += len(toks)
            points.append(point(j, tokens))
        tip_tokens = base_tokens + body_end
        tip = ChainTip(
            messages=len(messages),
            messages_bytes=ends[-1],
            digest=digests[-1],
            tokens=tip_tokens,
            block_hash=hash_at(tip_tokens),
            pending=pack_tokens(stream[tip_tokens // block * block - base_tokens : body_end]),
        )
        prompt_tokens = base_tokens + len(stream)
        hit = min(start.common_tokens // block, (prompt_tokens - 1) // block) * block
        return TurnPlan(
            session_id=session_id,
            source=source,
            parent=parent,
            prompt_tokens=prompt_tokens,
            hit_tokens=max(hit, 0),
            first_new_block=base_block,
            new_blocks=tuple(blocks),
            tenant=prompt.tenant,
            model=prompt.model,
            expected_output_tokens=_mean_output(record),
            block_tokens=block,
            _tip=tip,
            _checkpoints=b"".join(points),
            _replaced_tip=record.tip.digest if record is not None else None,
            _root=root,
            _chars=sum(content_chars(m) for m in messages[start.messages :]),
            _hashed_tokens=sum(len(t) for t in per_message),
        )

    async def finish(self, plan: TurnPlan, outcome: TurnOutcome) -> None:
        await self.store.commit(plan.commit(outcome))


def _mean_output(record: SessionRecord | None) -> int | None:
    if record is None:
        return None
    outputs = [f.output_tokens for f in record.recent] or [record.output_tokens]
    return round(sum(outputs) / len(outputs))


def _system_prefix(messages: Sequence[Mapping[str, Any]]) -> int:
    """How many leading messages are system (or developer) prompt."""
    count = 0
    for m in messages:
        if m.get("role") not in SYSTEM_ROLES:
            break
        count += 1
    return count
