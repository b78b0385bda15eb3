"""A small HuggingFace `tokenizer.json` made on the spot, so nothing is downloaded from a hub."""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer, models, pre_tokenizers

WORDS = "hello world the agent reads cached blocks from storage and decodes tokens".split()


def write_tiny_tokenizer(path: Path) -> Path:
    vocab = {"[UNK]": 0, **{w: i + 1 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(path))
    return path
