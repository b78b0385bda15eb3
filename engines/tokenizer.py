"""Tokenizers: one interface for the gateway and the workers.

The default `WordPieceTokenizer` needs no download and is fast: it cuts text into GPT-like pieces
(a word of up to six letters with its leading space, digits in threes, single symbols, runs of
whitespace), so one token covers about four characters of English as real BPE vocabularies do.
Ids are stable hashes of the pieces; the pieces of a small built-in output vocabulary map to their
own ids so generated text round-trips. `HFTokenizer` wraps a HuggingFace `tokenizer.json`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Protocol

import xxhash

from engines.errors import TokenizerError


class Tokenizer(Protocol):
    name: str

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def output_vocab(self) -> Sequence[int]:
        """Token ids a simulated engine may generate; each decodes to readable text."""
        ...

    def opening_vocab(self) -> Sequence[int]:
        """Token ids a reply may start with: like a real chat model's, no leading whitespace."""
        ...


_PIECE = re.compile(r" ?[A-Za-z]{1,6}| ?\d{1,3}|\s+|[^\sA-Za-z\d]")

_WORDS = (
    "the of and to in is that for it as with was on be by this are from at or an have not "
    "but they which one you all were can there their has been more if will would so what "
    "when up out into some them than then its time only new also these two may first any "
    "like now such our over just where most after should make very well back even use how "
    "each much before must here through way still find while same know take work since under "
    "used long good great because need point part place state data value model token cache "
    "agent turn request server engine prefill decode read path block store memory latency "
    "queue batch call tool result file code test run check plan next step done ok yes"
).split()
_PUNCT = [".", ",", ":", ";", "!", "?", "\n", "(", ")", "-"]
_VOCAB_PIECES: tuple[str, ...] = tuple([" " + w for w in _WORDS] + [w for w in _WORDS] + _PUNCT)
_HASH_BASE = 1 << 16
_MAX_CACHED_PIECES = 1 << 18
"""Bound on the piece → id memo (a few MB); past it, new pieces are hashed every time."""


class _PieceIds(dict[str, int]):
    """Piece → id: the vocabulary's own ids, other pieces by a stable hash (memoised)."""

    def __missing__(self, piece: str) -> int:
        token = _HASH_BASE + (xxhash.xxh32_intdigest(piece.encode()) & 0x7FFFFFF)
        if len(self) < _MAX_CACHED_PIECES:
            self[piece] = token
        return token


class WordPieceTokenizer:
    """The default: deterministic, dependency-free, about four characters per token."""

    name = "wordpiece"

    def __init__(self) -> None:
        self._id_of = _PieceIds({piece: i for i, piece in enumerate(_VOCAB_PIECES)})
        # Generated text reads as words (space-led pieces and sentence punctuation) and encodes
        # back to the same ids, so a reply sent back in the next prompt is the same tokens.
        self._output = tuple(
            i
            for i, piece in enumerate(_VOCAB_PIECES)
            if (piece[0] == " " or piece in ".,") and self.encode(piece) == [i]
        )
        self._opening = tuple(
            i
            for i, piece in enumerate(_VOCAB_PIECES)
            if piece.isalpha() and self.encode(piece) == [i]
        )

    def encode(self, text: str) -> list[int]:
        id_of = self._id_of
        return [id_of[piece] for piece in _PIECE.findall(text)]

    def decode(self, ids: Sequence[int]) -> str:
        pieces = _VOCAB_PIECES
        n = len(pieces)
        return "".join(pieces[i] if 0 <= i < n else "" for i in ids)

    def output_vocab(self) -> Sequence[int]:
        return self._output

    def opening_vocab(self) -> Sequence[int]:
        return self._opening


class HFTokenizer:
    """A HuggingFace `tokenizers` tokenizer loaded from a local `tokenizer.json`."""

    def __init__(self, path: str) -> None:
        try:
            from tokenizers import Tokenizer as _HF
        except ImportError as exc:  # optional dependency
            raise TokenizerError(
                "--tokenizer needs the 'tokenizers' package: pip install 'dualpath-gateway[hf]'"
            ) from exc
        try:
            self._tok = _HF.from_file(path)
        except Exception as exc:  # the library raises bare Exceptions for bad files
            raise TokenizerError(f"cannot load tokenizer {path!r}: {exc}") from exc
        self.name = path
        size = self._tok.get_vocab_size()
        # Skip the low ids, which are usually special or byte tokens, for readable output.
        self._output = tuple(
            range(min(1000, size // 2), min(1000, size // 2) + min(500, size // 2))
        )

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: Sequence[int]) -> str:
        return str(self._tok.decode(list(ids)))

    def output_vocab(self) -> Sequence[int]:
        return self._output

    def opening_vocab(self) -> Sequence[int]:
        return self._output


def load_tokenizer(path: str | None = None) -> Tokenizer:
    """The default tokenizer, or a HuggingFace one from `path`."""
    return WordPieceTokenizer() if path is None else HFTokenizer(path)
