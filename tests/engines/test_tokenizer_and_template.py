from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engines.chat_template import render_chat
from engines.errors import ChatTemplateError, TokenizerError
from engines.tokenizer import HFTokenizer, WordPieceTokenizer, load_tokenizer
from tests.support.tiny_tokenizer import write_tiny_tokenizer


def test_default_tokenizer_is_about_four_chars_per_token() -> None:
    text = "The agent reads the cached prefix from storage before it computes the new tokens. " * 50
    ids = WordPieceTokenizer().encode(text)
    assert 3.0 < len(text) / len(ids) < 6.0


@given(st.text(max_size=200))
def test_encoding_is_deterministic_and_prefix_stable(text: str) -> None:
    tok = WordPieceTokenizer()
    assert tok.encode(text) == tok.encode(text)
    # Appending a whole new line never changes the tokens of what came before it.
    head = tok.encode(text)[:-1]  # the last piece may merge with what follows (e.g. whitespace)
    assert tok.encode(text + "\n\nnext turn")[: len(head)] == head


def test_output_vocab_round_trips() -> None:
    tok = WordPieceTokenizer()
    ids = list(tok.output_vocab())
    assert len(ids) > 100
    assert tok.encode(tok.decode(ids)) == ids
    opening = list(tok.opening_vocab())
    assert all(tok.encode(tok.decode([i, *ids[:5]])) == [i, *ids[:5]] for i in opening)


def test_hf_tokenizer_from_a_local_file(tmp_path: Path) -> None:
    tok = load_tokenizer(str(write_tiny_tokenizer(tmp_path / "tokenizer.json")))
    assert isinstance(tok, HFTokenizer)
    assert tok.encode("hello world") == [1, 2]
    with pytest.raises(TokenizerError):
        HFTokenizer(str(tmp_path / "missing.json"))


def test_chat_template_renders_roles_parts_tools_and_results() -> None:
    prompt = render_chat(
        [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "look"}, {"type": "image_url"}]},
            {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "function": {}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "42"},
        ],
        tools=[{"type": "function", "function": {"name": "f"}}],
    )
    assert prompt.startswith("<|im_start|>system\n<tools>")
    assert "look<image_url>" in prompt and "<tool_result id=c1>42</tool_result>" in prompt
    assert prompt.endswith("<|im_start|>assistant\n")


def test_chat_template_prefix_of_a_conversation_is_a_prefix_of_the_prompt() -> None:
    turns = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    longer = [*turns, {"role": "user", "content": "c"}]
    head = render_chat(turns).removesuffix("<|im_start|>assistant\n")
    assert render_chat(longer).startswith(head)


def test_chat_template_rejects_a_message_without_role() -> None:
    with pytest.raises(ChatTemplateError):
        render_chat([{"content": "x"}])
