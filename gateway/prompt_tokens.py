"""The engines' chat template and tokenizer, message by message, for the session tracker.

Rendering each message on its own gives the same tokens as rendering the whole prompt, because
every message starts and ends on the template's own markers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from engines.chat_template import GENERATION_PROMPT, render_message, render_preamble
from engines.errors import ChatTemplateError
from engines.tokenizer import Tokenizer
from gateway.errors import InvalidRequest


class TemplateTokens:
    """Implements `session.tracker.PromptRenderer`."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self._tokenizer = tokenizer
        self._generation_prompt = tokenizer.encode(GENERATION_PROMPT)

    def preamble_tokens(self, tools: Sequence[Any] | None) -> list[int]:
        return self._tokenizer.encode(render_preamble(tools))

    def message_tokens(self, message: Mapping[str, Any]) -> list[int]:
        try:
            return self._tokenizer.encode(render_message(message))
        except ChatTemplateError as exc:
            raise InvalidRequest(str(exc), param="messages") from exc

    def generation_prompt_tokens(self) -> list[int]:
        return self._generation_prompt
