"""Response shapes: SGLang /generate objects and OpenAI chat/completion objects and chunks.

Built from `ReqState` snapshots. Streams diff cumulative state into OpenAI deltas, as SGLang's
OpenAI adapter does; /generate chunks stay cumulative (SGLang's default).
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from engines.sim_worker.worker import ReqState

DONE = b"data: [DONE]\n\n"


def sse(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def error_body(message: str, status: int, err_type: str = "BadRequestError") -> dict[str, Any]:
    return {"object": "error", "message": message, "type": err_type, "param": None, "code": status}


def generate_error_body(message: str, status: int, err_type: str = "BadRequestError") -> dict:
    # SGLang's /generate answers {"error": {"message"}}; the OpenAI keys ride along so a client
    # written against either shape reads it.
    return {"error": {"message": message}, **error_body(message, status, err_type)}


def generate_object(state: ReqState, index: int | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "id": state.rid,
        "finish_reason": state.finish_reason,
        "prompt_tokens": state.prompt_tokens,
        "weight_version": "default",
        "num_retractions": 0,
        "reasoning_tokens": 0,
        "completion_tokens": len(state.output_ids),
        "cached_tokens": state.cached_tokens,
    }
    if state.finish_reason is not None:
        meta["e2e_latency"] = round(state.e2e_latency or 0.0, 6)
    obj: dict[str, Any] = {
        "text": state.text,
        "output_ids": list(state.output_ids),
        "meta_info": meta,
    }
    if index is not None:
        obj["index"] = index
    return obj


def usage(state: ReqState, cache_report: bool) -> dict[str, Any]:
    completion = len(state.output_ids)
    details = (
        {"cached_tokens": state.cached_tokens} if cache_report and state.cached_tokens else None
    )
    return {
        "prompt_tokens": state.prompt_tokens,
        "total_tokens": state.prompt_tokens + completion,
        "completion_tokens": completion,
        "prompt_tokens_details": details,
        "reasoning_tokens": 0,
    }


def openai_finish(state: ReqState) -> tuple[str | None, Any]:
    """(finish_reason, matched_stop) in OpenAI terms."""
    fr = state.finish_reason
    if fr is None:
        return None, None
    kind = fr["type"]
    if kind == "stop":
        return ("tool_calls" if state.tool_call_id else "stop"), fr.get("matched")
    return kind, None


def _tool_calls(state: ReqState) -> list[dict[str, Any]] | None:
    if state.tool_call_id is None:
        return None
    return [
        {
            "id": state.tool_call_id,
            "index": 0,
            "type": "function",
            "function": {"name": state.tool_name, "arguments": state.tool_arguments},
        }
    ]


def chat_object(state: ReqState, model: str, cache_report: bool) -> dict[str, Any]:
    reason, matched = openai_finish(state)
    tool_calls = _tool_calls(state)
    message = {
        "role": "assistant",
        "content": None if tool_calls else state.text,
        "reasoning_content": None,
        "tool_calls": tool_calls,
    }
    return {
        "id": state.rid,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": reason,
                "matched_stop": matched,
            }
        ],
        "usage": usage(state, cache_report),
        "metadata": {"weight_version": "default"},
    }


def completion_object(state: ReqState, model: str, cache_report: bool) -> dict[str, Any]:
    reason, matched = openai_finish(state)
    return {
        "id": state.rid,
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "text": state.text,
                "logprobs": None,
                "finish_reason": reason,
                "matched_stop": matched,
            }
        ],
        "usage": usage(state, cache_report),
    }


class OpenAIStreamer:
    """Turns successive snapshots of one request into chat or completion chunks."""

    def __init__(self, kind: str, model: str, include_usage: bool, cache_report: bool) -> None:
        self._chat = kind == "chat"
        self._object = "chat.completion.chunk" if self._chat else "text_completion"
        self._model = model
        self._include_usage = include_usage
        self._cache_report = cache_report
        self._created = int(time.time())
        self._started = False
        self._text_len = 0
        self._args_len = -1  # -1: the tool call's header chunk is not out yet

    def _chunk(self, rid: str, choice: dict[str, Any] | None, **extra: Any) -> bytes:
        obj = {
            "id": rid,
            "object": self._object,
            "created": self._created,
            "model": self._model,
            "choices": [choice] if choice is not None else [],
            **extra,
        }
        return sse(obj)

    def _choice(self, payload: dict[str, Any], reason: str | None = None, matched: Any = None):
        key = "delta" if self._chat else "text"
        value = payload if self._chat else payload.get("content", "")
        return {
            "index": 0,
            key: value,
            "logprobs": None,
            "finish_reason": reason,
            "matched_stop": matched,
        }

    def chunks(self, state: ReqState) -> list[bytes]:
        out: list[bytes] = []
        if self._chat and not self._started:
            out.append(self._chunk(state.rid, self._choice({"role": "assistant", "content": ""})))
        self._started = True
        if state.tool_call_id is not None and self._chat:
            out.extend(self._tool_chunks(state))
        elif len(state.text) > self._text_len:
            delta = state.text[self._text_len :]
            self._text_len = len(state.text)
            out.append(self._chunk(state.rid, self._choice({"content": delta})))
        if state.finish_reason is not None:
            reason, matched = openai_finish(state)
            out.append(self._chunk(state.rid, self._choice({}, reason, matched)))
            if self._include_usage:
                out.append(self._chunk(state.rid, None, usage=usage(state, self._cache_report)))
        return out

    def _tool_chunks(self, state: ReqState) -> list[bytes]:
        out: list[bytes] = []
        if self._args_len < 0:
            call = {
                "index": 0,
                "id": state.tool_call_id,
                "type": "function",
                "function": {"name": state.tool_name, "arguments": ""},
            }
            out.append(self._chunk(state.rid, self._choice({"tool_calls": [call]})))
            self._args_len = 0
        if len(state.tool_arguments) > self._args_len:
            piece = state.tool_arguments[self._args_len :]
            self._args_len = len(state.tool_arguments)
            call = {"index": 0, "function": {"arguments": piece}}
            out.append(self._chunk(state.rid, self._choice({"tool_calls": [call]})))
        return out
