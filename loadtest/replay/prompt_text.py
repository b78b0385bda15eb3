"""User text of a given token count, and the feedback that keeps prompts the trace's length.

Text. A turn's user message is `words` common English words of at most six letters, drawn from a
`random.Random` seeded by (seed, agent, turn): the same run always sends the same bytes, and two
agents never share a prefix beyond the chat template. Such a word is one token in our simulated
workers' word-piece tokenizer and in GPT-like BPE vocabularies.

Length. The server's chat template adds tokens the trace does not count (role markers, the
assistant's opening), and a real tokenizer may not give exactly one token per word. So an agent
steers by what the server reports: turn *i*'s prompt should be the trace's
`Σ_{j<i}(append_j + output_j) + append_i`; the prompt it will get is the last prompt, plus the
last reply, plus this turn's words, plus the template's per-turn tokens (learnt from the last two
prompts). The words are chosen to close the gap, so after the first turn (whose template tokens
cannot be known beforehand) every prompt is within a few tokens of the trace's.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

_WORD_TEXT = (
    "the of and to in is that for it as with was on be by this are from at or an have not "
    "but they which one you all were can there their has been more if will would so what "
    "when up out into some them than then its time only new also these two may first any "
    "like now such our over just where most after should make very well back even use how "
    "each much before must here way still find while same know take work since under used "
    "long good great need point part place state data value model token cache agent turn "
    "server engine read path block store memory queue batch call tool result file code test "
    "run check plan next step done yes list line value error fix bug patch diff open close "
    "print return class import from type field name path shell cat grep find sort head tail "
    "word small large fast slow old young early late high low left right big short water "
    "light house world city road table paper book room hand day night year week month hour "
    "number order group level form case power money music story game voice change reason"
)
WORDS: tuple[str, ...] = tuple(dict.fromkeys(_WORD_TEXT.split()))
"""Lowercase words of one to six letters (each one word-piece token)."""

MAX_WORDS_PER_TURN = 1 << 20
"""A bound on one message (a trace's append is checked to be an integer, not to be sane)."""


def user_text(seed: int, agent: str, turn: int, words: int) -> str:
    """`words` words, the same for the same arguments on any machine and Python."""
    if words < 1:
        raise ValueError("a user message needs at least one word")
    rng = random.Random(f"{seed}/{agent}/{turn}")
    return " ".join(rng.choices(WORDS, k=min(words, MAX_WORDS_PER_TURN)))


@dataclass(slots=True)
class PromptSteer:
    """One agent's feedback: how many words its next user message should have."""

    trace_context: int = 0
    """The trace's tokens before this turn: every earlier append and output."""
    last_prompt: int | None = None
    """The server's `prompt_tokens` of the last turn (None: unknown, no feedback)."""
    last_output: int = 0
    last_words: int = 0
    template: int = 0
    """Tokens the server's template adds per turn beyond words and outputs (learnt)."""

    def words(self, append: int) -> int:
        """Words for a turn that appends `append` tokens in the trace."""
        if self.last_prompt is None:
            return max(1, append - self.template) if self.trace_context == 0 else append
        target = self.trace_context + append
        expected = self.last_prompt + self.last_output + self.template
        return max(1, min(target - expected, 2 * append + 64))

    def observe(
        self, append: int, output: int, words: int, prompt: int | None, completion: int
    ) -> None:
        """A turn came back: its trace numbers, the words sent and the server's counts."""
        if prompt is not None:
            if self.last_prompt is None:
                self.template = max(0, prompt - words) if self.trace_context == 0 else 0
            else:
                self.template = max(0, prompt - self.last_prompt - self.last_output - words)
        self.last_prompt = prompt
        self.last_output = completion
        self.last_words = words
        self.trace_context += append + output
