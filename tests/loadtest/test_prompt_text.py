"""The replay's user text: deterministic, one word-piece token per word, and prompts that track
the trace once the server's counts feed back (checked with the workers' own tokenizer and chat
template, rendering what the server would)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engines.chat_template import render_chat
from engines.tokenizer import load_tokenizer
from loadtest.replay.prompt_text import WORDS, PromptSteer, user_text

TOKENIZER = load_tokenizer(None)
FIRST_TURN_TEMPLATE_TOKENS = 32
"""What the chat template adds to a first prompt (no feedback yet); ours adds 27."""


def test_words_are_short_lowercase_and_distinct() -> None:
    assert len(WORDS) == len(set(WORDS)) > 150
    assert all(w.isalpha() and w.islower() and 1 <= len(w) <= 6 for w in WORDS)


def test_text_is_deterministic_and_differs_by_agent_turn_and_seed() -> None:
    text = user_text(7, "agent-1", 3, 200)
    assert text == user_text(7, "agent-1", 3, 200)
    assert text != user_text(7, "agent-2", 3, 200)
    assert text != user_text(7, "agent-1", 4, 200)
    assert text != user_text(8, "agent-1", 3, 200)
    assert user_text(7, "agent-1", 3, 50) == " ".join(text.split()[:50])


@given(words=st.integers(1, 5000), seed=st.integers(0, 2**32))
def test_one_token_per_word(words: int, seed: int) -> None:
    assert len(TOKENIZER.encode(user_text(seed, "a", 0, words))) == words


def test_a_message_needs_a_word() -> None:
    with pytest.raises(ValueError, match="at least one word"):
        user_text(0, "a", 0, 0)


@given(
    turns=st.lists(st.tuples(st.integers(200, 3000), st.integers(1, 300)), min_size=1, max_size=8),
    seed=st.integers(0, 1000),
)
def test_prompts_track_the_trace(turns: list[tuple[int, int]], seed: int) -> None:
    """Prompt tokens as the server counts them (chat template included) against the trace's
    `Σ earlier (append + output) + append`: the first turn is over by the template's tokens,
    the rest within 5%."""
    rng = random.Random(seed)
    steer = PromptSteer()
    messages: list[dict[str, str]] = []
    context = 0
    for index, (append, output) in enumerate(turns):
        words = steer.words(append)
        messages.append({"role": "user", "content": user_text(seed, "agent", index, words)})
        prompt = len(TOKENIZER.encode(render_chat(messages)))
        expected = context + append
        if index == 0:
            assert 0 <= prompt - expected <= FIRST_TURN_TEMPLATE_TOKENS
        else:
            assert abs(prompt - expected) <= 0.05 * expected, (index, prompt, expected)
        reply = " ".join(rng.choices(WORDS, k=output))
        steer.observe(append, output, words, prompt, output)
        messages.append({"role": "assistant", "content": reply})
        context += append + output


def test_without_usage_the_words_are_the_appends() -> None:
    steer = PromptSteer()
    assert steer.words(300) == 300
    steer.observe(300, 20, 300, None, 20)
    assert steer.words(400) == 400
