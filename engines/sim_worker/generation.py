"""Deterministic answers: which tokens a request "samples" and which tool call it makes.

Prefill and decode of one request plan the same answer independently (same prompt ids, same
seed), exactly as both halves of a real PD pair tokenize the same prompt; the decode then uses the
first token the prefill really published, so the two agree even if the plans ever diverged.
"""

from __future__ import annotations

import random
from array import array
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import xxhash

from engines.tokenizer import Tokenizer

EOS_TOKEN_ID = 151645
"""The id reported in `finish_reason.matched` when an answer ends naturally (Qwen's <|im_end|>)."""

_ARG_PIECE_CHARS = 6
"""Characters of tool-call arguments one output token carries."""


@dataclass(frozen=True, slots=True)
class ToolCallPlan:
    call_id: str
    name: str
    arguments: str
    """The complete arguments JSON string."""
    pieces: tuple[str, ...]
    """`arguments` cut into one piece per output token."""


@dataclass(frozen=True, slots=True)
class Plan:
    token_ids: tuple[int, ...]
    """The natural answer: EOS follows its last token (unless the budget ends it first)."""
    tool_call: ToolCallPlan | None = None


def request_seed(config_seed: int, prompt_ids: Sequence[int], explicit: int | None) -> int:
    """The request's own `seed` if it gave one, else the worker seed mixed with the prompt."""
    if explicit is not None:
        return explicit
    h = xxhash.xxh64(array("q", prompt_ids).tobytes(), seed=config_seed & 0xFFFFFFFFFFFFFFFF)
    return h.intdigest()


def choose_tool(body: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The tool a chat request gets called, or None when it should get text.

    A call is made when tools are offered, `tool_choice` is not "none" and the last message is
    the user's; after a tool result the model answers in text, so an agent loop terminates.
    """
    tools = body.get("tools")
    choice = body.get("tool_choice", "auto")
    messages = body.get("messages") or []
    if not tools or choice == "none" or not messages:
        return None
    last = messages[-1]
    if not isinstance(last, Mapping) or last.get("role") != "user":
        return None
    functions = [t.get("function") for t in tools if isinstance(t, Mapping)]
    functions = [f for f in functions if isinstance(f, Mapping) and isinstance(f.get("name"), str)]
    if isinstance(choice, Mapping):
        wanted = (choice.get("function") or {}).get("name")
        named = [f for f in functions if f["name"] == wanted]
        return named[0] if named else None
    return functions[0] if functions else None


def plan_answer(
    tokenizer: Tokenizer,
    seed: int,
    *,
    min_tokens: int,
    max_tokens: int,
    tool: Mapping[str, Any] | None = None,
) -> Plan:
    rng = random.Random(seed)
    vocab = tokenizer.output_vocab()
    if tool is not None:
        args = orjson.dumps(_value_for(tool.get("parameters") or {}, "args", rng)).decode()
        pieces = tuple(
            args[i : i + _ARG_PIECE_CHARS] for i in range(0, len(args), _ARG_PIECE_CHARS)
        ) or ("{}",)
        call = ToolCallPlan(f"call_{rng.getrandbits(96):024x}", str(tool["name"]), args, pieces)
        return Plan(tuple(rng.choice(vocab) for _ in pieces), call)
    n = rng.randint(min_tokens, max_tokens)
    if n == 0:
        return Plan(())
    first = rng.choice(tokenizer.opening_vocab())
    return Plan((first, *(rng.choice(vocab) for _ in range(n - 1))))


_WORDS = ("alpha", "beta", "gamma", "delta", "report", "main", "config", "value", "item")


def _value_for(schema: Mapping[str, Any], name: str, rng: random.Random) -> Any:
    """A plausible value for a JSON-schema fragment, keyed on the property's name for strings."""
    if schema.get("enum"):
        return schema["enum"][0]
    if "default" in schema:
        return schema["default"]
    kind = schema.get("type", "object" if "properties" in schema else "string")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "string")
    if kind == "object":
        props = schema.get("properties") or {}
        return {
            k: _value_for(v if isinstance(v, Mapping) else {}, k, rng) for k, v in props.items()
        }
    if kind == "array":
        items = schema.get("items")
        return [_value_for(items if isinstance(items, Mapping) else {}, name, rng)]
    if kind == "integer":
        return rng.randint(1, 100)
    if kind == "number":
        return round(rng.uniform(0, 100), 2)
    if kind == "boolean":
        return True
    return _string_for(name.lower(), rng)


def _string_for(name: str, rng: random.Random) -> str:
    word = rng.choice(_WORDS)
    if "path" in name or "file" in name:
        return f"/workspace/{word}.py"
    if "url" in name:
        return f"https://example.com/{word}"
    if "city" in name or "location" in name:
        return rng.choice(("Paris", "Tokyo", "Lima"))
    if "command" in name or "cmd" in name:
        return f"ls {word}"
    return f"{word} {rng.choice(_WORDS)}"
