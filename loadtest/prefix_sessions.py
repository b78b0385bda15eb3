"""Which earlier agent a request continues, told from its prefix block ids alone.

Mooncake-style traces name each 512-token block by an id that stands for the whole prefix up to
and including it, and carry no session ids. A multi-turn conversation shows up as a request whose
ids start with all of an earlier request's ids: the earlier prompt is its prefix. So each agent
is remembered by its last prompt's *tail* ids: the last full block's id (the next turn's prompt
holds that block unchanged) and, when the prompt ends inside a block, that partial block's id
(a resent prompt repeats it). A request continues the agent owning the deepest tail id among its
own ids. Nothing else is remembered: a request that shares only an earlier part of an agent's
prompt (a fork, a regenerated answer) starts a new agent, as an agent here is a single line of
turns.

The first `min_shared_blocks − 1` blocks never identify an agent: in real traces the first block
is the system prompt every conversation shares (in Mooncake's conversation trace, block 0 is in
every request), and it says nothing about who is talking. This is the gateway's own rule for
unnamed sessions: sharing the system prompt alone is not a continuation.

Bounded: at most `max_tails` ids are remembered, least recently used dropped first; an agent
whose ids were dropped cannot be continued and its next request starts a new agent.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Match:
    agent: int
    """The continued agent's index (as given to `remember`)."""
    blocks: int
    """Leading blocks of the request known to be the agent's last prompt."""


class PrefixSessions:
    """An LRU map from tail block id to agent, with at most two ids per agent."""

    def __init__(self, *, max_tails: int = 200_000, min_shared_blocks: int = 2) -> None:
        if max_tails < 2 or min_shared_blocks < 1:
            raise ValueError("max_tails must be ≥ 2 and min_shared_blocks ≥ 1")
        self._max_tails = max_tails
        self._min_index = min_shared_blocks - 1
        self._owner: OrderedDict[int, int] = OrderedDict()
        self._tails: dict[int, tuple[int, ...]] = {}

    def __len__(self) -> int:
        return len(self._owner)

    def match(self, hash_ids: Sequence[int]) -> Match | None:
        """The agent whose last prompt this request extends, by the deepest shared tail id."""
        owner = self._owner
        for index in range(len(hash_ids) - 1, self._min_index - 1, -1):
            agent = owner.get(hash_ids[index])
            if agent is not None:
                return Match(agent, index + 1)
        return None

    def remember(
        self, agent: int, hash_ids: Sequence[int], input_length: int, block_tokens: int
    ) -> None:
        """Make this request `agent`'s last prompt: its tail ids now name the agent."""
        self.forget(agent)
        full = input_length // block_tokens
        tails = {
            hash_ids[index]
            for index in (full - 1, len(hash_ids) - 1)
            if self._min_index <= index < len(hash_ids)
        }
        for tail in sorted(tails):
            previous = self._owner.pop(tail, None)
            if previous is not None:
                self._drop(previous, tail)
            self._owner[tail] = agent
        if tails:
            self._tails[agent] = tuple(sorted(tails))
        while len(self._owner) > self._max_tails:
            tail, owner = self._owner.popitem(last=False)
            self._drop(owner, tail)

    def forget(self, agent: int) -> None:
        for tail in self._tails.pop(agent, ()):
            self._owner.pop(tail, None)

    def _drop(self, agent: int, tail: int) -> None:
        left = tuple(t for t in self._tails.get(agent, ()) if t != tail)
        if left:
            self._tails[agent] = left
        else:
            self._tails.pop(agent, None)
