"""The chat template: OpenAI messages (and offered tools) rendered to one prompt string.

ChatML-shaped, like Qwen's: every message becomes `<|im_start|>role\\n…<|im_end|>\\n`, content
parts are joined, tool calls and tool results are rendered as JSON, and the prompt ends with the
assistant's opening. Gateway and workers render alike, so both count the same tokens.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from engines.errors import ChatTemplateError


def _content_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts: list[str] = []
        for part in content:
            if isinstance(part, Mapping):
                if "text" in part:
                    parts.append(str(part["text"]))
                else:  # images, audio, files: keep a stable placeholder of their type
                    parts.append(f"<{part.get('type', 'part')}>")
            else:
                parts.append(str(part))
        return "".join(parts)
    raise ChatTemplateError(f"unsupported message content of type {type(content).__name__}")


def _dumps(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


def render_message(message: Mapping[str, Any]) -> str:
    """One message as it appears in the prompt."""
    role = message.get("role")
    if not isinstance(role, str):
        raise ChatTemplateError("every message needs a string 'role'")
    body = _content_text(message.get("content"))
    if message.get("tool_calls"):
        body += "\n<tool_calls>" + _dumps(message["tool_calls"]) + "</tool_calls>"
    if role == "tool" and message.get("tool_call_id"):
        body = f"<tool_result id={message['tool_call_id']}>{body}</tool_result>"
    return f"<|im_start|>{role}\n{body}<|im_end|>\n"


GENERATION_PROMPT = "<|im_start|>assistant\n"
"""The assistant's turn opening that ends every chat prompt."""


def render_preamble(tools: Sequence[Any] | None) -> str:
    """What comes before the messages: the offered tools, if any."""
    if not tools:
        return ""
    return "<|im_start|>system\n<tools>" + _dumps(list(tools)) + "</tools><|im_end|>\n"


def render_chat(messages: Sequence[Mapping[str, Any]], tools: Sequence[Any] | None = None) -> str:
    """The whole prompt for a chat request, ending with the assistant's turn opening."""
    return render_preamble(tools) + "".join(render_message(m) for m in messages) + GENERATION_PROMPT
