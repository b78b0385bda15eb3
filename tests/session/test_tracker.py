"""The session tracker on the in-process store: identity, incremental hashing, divergence, forks."""

from __future__ import annotations

import itertools
import time
from collections.abc import Mapping, Sequence
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from engines.chat_template import render_chat
from engines.tokenizer import WordPieceTokenizer
from gateway.prompt_tokens import TemplateTokens
from kvstore import block_key
from session.identity import ClaimedSession
from session.memory_store import MemorySessionStore
from session.tracker import Prompt, SessionTracker, TurnOutcome, TurnPlan

TOKENIZER = WordPieceTokenizer()
BLOCK = 64
WORDS = "alpha beta gamma delta read the file and run tests then fix code".split()


class CountingTokens(TemplateTokens):
    def __init__(self) -> None:
        super().__init__(TOKENIZER)
        self.rendered = 0

    def message_tokens(self, message: Mapping[str, Any]) -> list[int]:
        self.rendered += 1
        return super().message_tokens(message)


def text(seed: int, words: int) -> str:
    return " ".join(WORDS[(seed * 7 + i * 3) % len(WORDS)] + str(i % 10) for i in range(words))


def tracker() -> SessionTracker:
    ids = itertools.count()
    return SessionTracker(
        MemorySessionStore(), CountingTokens(), block_key, new_id=lambda: f"s{next(ids)}"
    )


def prompt(messages: Sequence[Mapping[str, Any]], **kw: Any) -> Prompt:
    kw.setdefault("tenant", "t1")
    kw.setdefault("model", "m")
    kw.setdefault("claimed", None)
    return Prompt(messages=list(messages), canonical=orjson.dumps(list(messages)), **kw)


def full_tokens(messages: Sequence[Mapping[str, Any]], tools: Any = None) -> int:
    return len(TOKENIZER.encode(render_chat(messages, tools)))


def tokens_before(messages: Sequence[Mapping[str, Any]]) -> int:
    """Prompt tokens up to the end of `messages` (without the assistant's opening)."""
    return full_tokens(messages) - len(TOKENIZER.encode("<|im_start|>assistant\n"))


async def turn(tr: SessionTracker, p: Prompt, output_tokens: int = 0) -> TurnPlan:
    plan = await tr.begin(p)
    await tr.finish(plan, TurnOutcome(output_tokens, 0.1, 0.01, "p0", "d0", time.time()))
    return plan


def agent_turns(n: int) -> list[list[dict[str, Any]]]:
    """Prompts of an agent loop: system, user, then assistant + tool result per turn."""
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": text(0, 150)},
        {"role": "user", "content": text(1, 40)},
    ]
    prompts = [list(messages)]
    for i in range(n - 1):
        messages.append({"role": "assistant", "content": text(i + 2, 30)})
        messages.append({"role": "tool", "tool_call_id": f"c{i}", "content": text(i + 3, 90)})
        prompts.append(list(messages))
    return prompts


def reply_tokens(messages: Sequence[Mapping[str, Any]], i: int) -> int:
    """Tokens of the assistant reply that the next prompt carries (what decode generated)."""
    return len(TOKENIZER.encode(" " + text(i + 2, 30)))


@pytest.mark.parametrize("claimed", [None, ClaimedSession("agent-7", "header")])
async def test_an_agent_loop_is_one_session_whose_hits_grow_with_each_turn(
    claimed: ClaimedSession | None,
) -> None:
    tr = tracker()
    previous_total = 0
    session_ids = set()
    for i, messages in enumerate(agent_turns(20)):
        plan = await turn(tr, prompt(messages, claimed=claimed), reply_tokens(messages, i))
        session_ids.add(plan.session_id)
        assert plan.prompt_tokens == full_tokens(messages)
        assert plan.hit_tokens == previous_total // BLOCK * BLOCK
        previous_total = plan.prompt_tokens + reply_tokens(messages, i)
    assert len(session_ids) == 1
    record = await tr.store.get("t1", session_ids.pop())
    assert record is not None and record.turns == 20
    assert record.recent[-1].hit_tokens == plan.hit_tokens


async def test_a_turn_renders_only_what_it_appends() -> None:
    tr = tracker()
    renderer = tr._renderer
    assert isinstance(renderer, CountingTokens)
    prompts = agent_turns(12)
    await turn(tr, prompt(prompts[0]))
    for messages in prompts[1:]:
        renderer.rendered = 0
        await turn(tr, prompt(messages))
        assert renderer.rendered <= 3  # two new messages (and the reply once more for its hit)


async def test_a_retry_of_the_same_prompt_hits_all_but_the_last_block() -> None:
    tr = tracker()
    messages = agent_turns(3)[-1]
    first = await turn(tr, prompt(messages))
    again = await turn(tr, prompt(messages))
    assert again.session_id == first.session_id
    assert again.hit_tokens == (first.prompt_tokens - 1) // BLOCK * BLOCK


async def test_a_rewritten_history_hits_up_to_the_first_changed_message() -> None:
    tr = tracker()
    claimed = ClaimedSession("s", "header")
    messages = agent_turns(6)[-1]
    await turn(tr, prompt(messages, claimed=claimed))
    edited = [*messages[:3], {"role": "assistant", "content": "compacted summary"}, *messages[4:]]
    plan = await turn(tr, prompt(edited, claimed=claimed))
    assert plan.session_id == "s"
    assert plan.hit_tokens == tokens_before(messages[:3]) // BLOCK * BLOCK
    record = await tr.store.get("t1", "s")
    assert record is not None and record.turns == 2 and record.tip.messages == len(edited)
    # The next turn continues from the rewritten history.
    more = [*edited, {"role": "user", "content": "go on"}]
    nxt = await turn(tr, prompt(more, claimed=claimed))
    assert nxt.hit_tokens >= (plan.prompt_tokens - BLOCK) // BLOCK * BLOCK


async def test_an_unnamed_branch_is_a_fork_with_the_shared_prefix_as_hit() -> None:
    tr = tracker()
    messages = agent_turns(8)[-1]
    trunk = await turn(tr, prompt(messages))
    branch = [*messages[:6], {"role": "user", "content": "try another way " + text(9, 40)}]
    fork = await turn(tr, prompt(branch))
    assert fork.source == "fork" and fork.parent == trunk.session_id
    assert fork.session_id != trunk.session_id
    assert fork.hit_tokens == tokens_before(messages[:6]) // BLOCK * BLOCK
    # Both branches go on as sessions of their own.
    again = await turn(tr, prompt([*messages, {"role": "user", "content": "next"}]))
    assert again.session_id == trunk.session_id
    again_fork = await turn(tr, prompt([*branch, {"role": "assistant", "content": "ok"}]))
    assert again_fork.session_id == fork.session_id


async def test_sharing_only_the_system_prompt_makes_a_new_session_that_hits_it() -> None:
    tr = tracker()
    first = agent_turns(4)[-1]
    a = await turn(tr, prompt(first))
    other = [first[0], {"role": "user", "content": text(42, 200)}]
    b = await turn(tr, prompt(other))
    assert b.source == "new" and b.parent is None and b.session_id != a.session_id
    assert b.hit_tokens == tokens_before(first[:1]) // BLOCK * BLOCK > 0


async def test_tenants_never_share_sessions_or_hits() -> None:
    tr = tracker()
    prompts = agent_turns(5)
    for messages in prompts:
        await turn(tr, prompt(messages, tenant="a"))
    plan = await turn(tr, prompt(prompts[-1], tenant="b"))
    assert plan.source == "new" and plan.hit_tokens == 0
    assert await tr.store.get("b", plan.session_id) is not None
    assert await tr.store.get("a", plan.session_id) is None


async def test_tools_are_part_of_the_prefix() -> None:
    tr = tracker()
    tools = [{"type": "function", "function": {"name": "read", "parameters": {}}}]
    prompts = agent_turns(4)
    for messages in prompts[:-1]:
        await turn(tr, prompt(messages, tools=tools))
    plan = await turn(tr, prompt(prompts[-1], tools=tools))
    assert plan.source == "inferred"
    assert plan.prompt_tokens == full_tokens(prompts[-1], tools)
    changed = await turn(tr, prompt(prompts[-1], tools=[*tools, *tools]))
    assert changed.session_id != plan.session_id and changed.hit_tokens == 0


_messages = st.lists(
    st.tuples(
        st.sampled_from(["user", "assistant", "tool"]), st.integers(0, 60), st.integers(0, 9)
    ),
    min_size=1,
    max_size=12,
)


@given(turns=st.lists(_messages, min_size=1, max_size=5), rewrite=st.integers(0, 20))
async def test_incremental_hashes_equal_hashing_from_scratch(
    turns: list[list[tuple[str, int, int]]], rewrite: int
) -> None:
    tr = tracker()
    claimed = ClaimedSession("s", "header")
    history: list[dict[str, Any]] = [{"role": "system", "content": text(1, 20)}]
    for step, new in enumerate(turns):
        if step == 2 and len(history) > 1:  # a rewrite somewhere in the middle
            cut = 1 + rewrite % (len(history) - 1)
            history = [*history[:cut], {"role": "user", "content": f"rewritten {rewrite}"}]
        history += [{"role": r, "content": text(s, w)} for r, w, s in new]
        plan = await turn(tr, prompt(history, claimed=claimed))
        scratch = await tracker().begin(prompt(history))
        assert plan.prompt_tokens == scratch.prompt_tokens == full_tokens(history)
        assert scratch.first_new_block == 0
        assert plan.new_blocks == scratch.new_blocks[plan.first_new_block :]
        assert plan.hit_tokens <= plan.prompt_tokens - 1 or plan.prompt_tokens == 0
        assert plan.hit_tokens % BLOCK == 0


# --- probe points: the keys a plan offers for checking its hit against the KV store ----------


def worker_keys(messages: Sequence[Mapping[str, Any]], tenant: str = "t1") -> list[bytes]:
    """The block keys a worker stores this prompt under (`engines/sim_worker/kv_io.py`): the
    whole rendered prompt chained from the root the gateway sends it."""
    root = block_key.chain_root(b"", tenant, "m")
    return block_key.chain_blocks(root, TOKENIZER.encode(render_chat(messages)), BLOCK)


def check_probe_points(plan: TurnPlan, messages: Sequence[Mapping[str, Any]], limit: int) -> None:
    points = plan.probe_points(limit)
    hit_blocks = plan.hit_tokens // BLOCK
    indexes = [i for i, _ in points]
    assert indexes == sorted(set(indexes)) and len(points) <= limit
    assert all(0 <= i < hit_blocks for i in indexes)
    keys = worker_keys(messages)
    assert all(key == keys[i] for i, key in points)
    if hit_blocks:  # the last hit block, the one eviction takes first, is always probed
        assert indexes[-1] == hit_blocks - 1


@given(turns=st.lists(_messages, min_size=1, max_size=5), rewrite=st.integers(0, 20))
async def test_probe_points_are_worker_keys_inside_the_hit(
    turns: list[list[tuple[str, int, int]]], rewrite: int
) -> None:
    tr = tracker()
    claimed = ClaimedSession("s", "header") if rewrite % 2 else None
    history: list[dict[str, Any]] = [{"role": "system", "content": text(1, 20)}]
    for step, new in enumerate(turns):
        if step == 2 and len(history) > 1:  # a rewrite (named) or a fork (unnamed)
            cut = 1 + rewrite % (len(history) - 1)
            history = [*history[:cut], {"role": "user", "content": f"rewritten {rewrite}"}]
        history += [{"role": r, "content": text(s, w)} for r, w, s in new]
        plan = await turn(tr, prompt(history, claimed=claimed), output_tokens=rewrite)
        for limit in (1, 4, 64):
            check_probe_points(plan, history, limit)


async def test_probe_points_of_a_long_session_are_bounded_and_keep_the_newest() -> None:
    tr = tracker()
    prompts = agent_turns(60)
    for i, messages in enumerate(prompts):
        plan = await turn(tr, prompt(messages), reply_tokens(messages, i))
    assert plan.hit_tokens > 64 * BLOCK
    every = plan.probe_points(limit=10**6)
    assert len(every) > 64  # more checkpoints than the bound
    bounded = plan.probe_points()
    check_probe_points(plan, messages, 64)
    assert len(bounded) == 64
    assert bounded[32:] == every[-32:]  # the newest half exact
    assert bounded[0] == every[0]  # the oldest always checked: a lost head is no hit at all
    at = {point: i for i, point in enumerate(every)}
    gaps = [at[b] - at[a] for a, b in itertools.pairwise(bounded[:33])]
    assert max(gaps) - min(gaps) <= 1  # the older ones thinned evenly, not bunched


async def test_probe_keys_are_members_of_a_worker_stored_chain() -> None:
    from kvstore.embedded_store import EmbeddedKVStore

    tr = tracker()
    prompts = agent_turns(4)
    for i, messages in enumerate(prompts):
        plan = await turn(tr, prompt(messages), reply_tokens(messages, i))
    store = EmbeddedKVStore(capacity_bytes=1 << 20)
    try:
        # What the workers left: the last prompt's blocks as its prefill wrote them.
        await store.put([(key, b"kv") for key in worker_keys(prompts[-1])])
        points = plan.probe_points()
        assert points and await store.exists([key for _, key in points]) == [True] * len(points)
        other = await turn(tr, prompt(prompts[-1], tenant="t2"))
        assert other.probe_points() == []  # another tenant's session: no hit, nothing to probe
    finally:
        await store.close()
