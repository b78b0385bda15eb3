"""Request bodies (SGLang /generate, OpenAI chat and completions) parsed into `GenRequest`s.

Plain dict checks rather than pydantic models: the sim must accept whatever SGLang accepts,
including the router's injected fields, and reject the rest with SGLang's 400.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from engines.chat_template import render_chat
from engines.errors import ChatTemplateError
from engines.sim_worker.config import SimWorkerConfig
from engines.sim_worker.errors import BadRequest
from engines.sim_worker.generation import choose_tool
from engines.tokenizer import Tokenizer


@dataclass(frozen=True, slots=True)
class Bootstrap:
    host: str
    port: int
    room: int


READ_PATHS = ("pe", "de", "split")
STAGED_READ_PATHS = ("de", "split")
"""Read paths on which the decode stages hit blocks for the prefill (they need `stager`)."""


@dataclass(frozen=True, slots=True)
class KVDirective:
    """The gateway's `dualpath` extension field: how this request's cached KV is loaded.

    Sent only to workers whose /server_info advertises `dualpath_kv`; stock SGLang never sees it.
    """

    root: bytes | None = None
    """Chain root of the block keys (salted per tenant and model); None: the worker's default."""
    read_path: str = "pe"
    """`pe`: the prefill reads the hit blocks through its own storage NIC; `de`: the decode reads
    them through its storage NIC and stages them, and the prefill pulls them over the compute
    network from `stager`; `split`: the prefill reads the first `pe_share` of them while the
    decode reads and stages the rest, both at once."""
    stager: str | None = None
    """Base URL of the decode worker that stages the blocks (read paths `de` and `split`)."""
    expected_hit_tokens: int | None = None
    """What the gateway expects to be cached: a shortfall is counted as recomputed tokens."""
    pe_share: float | None = None
    """Read path `split`: the fraction of the hit blocks the prefill reads (`kv_io.split_cut`);
    None on the other read paths, which ignore it."""


def parse_kv_directive(body: Mapping[str, Any]) -> KVDirective | None:
    ext = body.get("dualpath")
    if ext is None:
        return None
    if not isinstance(ext, Mapping):
        raise BadRequest("'dualpath' must be an object")
    root = ext.get("kv_root")
    try:
        root_bytes = bytes.fromhex(root) if root is not None else None
    except (TypeError, ValueError):
        root_bytes = b""
    if root_bytes is not None and len(root_bytes) != 16:
        raise BadRequest("'dualpath.kv_root' must be 32 hex digits")
    path = ext.get("read_path", "pe")
    if path not in READ_PATHS:
        raise BadRequest(f"'dualpath.read_path' must be one of {READ_PATHS}")
    share = _pe_share(ext) if path == "split" else None
    stager = ext.get("stager")
    if path in STAGED_READ_PATHS and not (isinstance(stager, str) and stager.startswith("http")):
        raise BadRequest(
            f"'dualpath.stager' must be the decode worker's URL for read path '{path}'"
        )
    expected = _opt_int(ext, "expected_hit_tokens")
    return KVDirective(root_bytes, path, stager, expected, share)


def _pe_share(ext: Mapping[str, Any]) -> float:
    """Read path `split` must name its cut: a missing or odd one is the client's error, since
    guessing it would load the KV along a route the scheduler did not choose."""
    value = ext.get("pe_share")
    # NaN fails the range check as well, and so do the infinities.
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise BadRequest("'dualpath.pe_share' must be a number in [0, 1] for read_path 'split'")
    return float(value)


@dataclass(frozen=True, slots=True)
class GenRequest:
    rid: str
    prompt_ids: tuple[int, ...]
    max_new_tokens: int
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False
    seed: int | None = None
    tool: Mapping[str, Any] | None = None
    bootstrap: Bootstrap | None = None
    """None for role null, or a PD request without bootstrap fields (rejected by PD roles)."""
    kv: KVDirective | None = None
    cache_namespace: str = ""
    """SGLang's `cache_salt` + `extra_key`: prompts of different namespaces share no cached
    prefix in the local prefix cache."""


@dataclass(frozen=True, slots=True)
class ApiRequest:
    """What the response layer needs besides the per-item generation requests."""

    items: tuple[GenRequest, ...]
    stream: bool
    batch: bool = False
    model: str = "default"
    include_usage: bool = False


def _opt_int(body: Mapping[str, Any], key: str) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(f"'{key}' must be an integer")
    return value


def _stop(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,) if value else ()
    if isinstance(value, list) and all(isinstance(s, str) for s in value):
        return tuple(s for s in value if s)
    raise BadRequest("'stop' must be a string or a list of strings")


def _token_list(value: Any, key: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(
        isinstance(t, int) and not isinstance(t, bool) for t in value
    ):
        raise BadRequest(f"'{key}' must be a list of token ids")
    return tuple(value)


def _pick(value: Any, i: int) -> Any:
    return value[i] if isinstance(value, list) else value


def _cache_namespace(body: Mapping[str, Any], i: int = 0) -> str:
    """`cache_salt` (OpenAI routes) then `extra_key` (a list on a /generate batch)."""
    parts = (body.get("cache_salt"), _pick(body.get("extra_key"), i))
    for name, part in zip(("cache_salt", "extra_key"), parts, strict=True):
        if part is not None and not isinstance(part, str):
            raise BadRequest(f"'{name}' must be a string")
    return "".join(p for p in parts if p)


def _bootstrap(body: Mapping[str, Any], i: int, config: SimWorkerConfig) -> Bootstrap | None:
    host, port, room = (body.get(k) for k in ("bootstrap_host", "bootstrap_port", "bootstrap_room"))
    if room is None and host is None:
        return None
    host, port = _pick(host, i), _pick(port, i)
    # A scalar room for a batch stands for room + i, as SGLang's _normalize_bootstrap_params.
    room = room[i] if isinstance(room, list) else (room + i if isinstance(room, int) else room)
    if not isinstance(host, str) or not host:
        raise BadRequest("'bootstrap_host' must be a non-empty string")
    if port is not None and (isinstance(port, bool) or not isinstance(port, int)):
        raise BadRequest("'bootstrap_port' must be an integer or null")
    if isinstance(room, bool) or not isinstance(room, int) or not 0 <= room < 1 << 63:
        raise BadRequest("'bootstrap_room' must be an integer in [0, 2^63)")
    return Bootstrap(host, config.bootstrap_port if port is None else port, room)


def _check_budget(prompt_len: int, max_new: int, context_length: int) -> None:
    if prompt_len == 0:
        raise BadRequest("the input is empty")
    if max_new < 0:
        raise BadRequest("max_new_tokens must be at least 0")
    if prompt_len + max_new > context_length:
        raise BadRequest(
            f"Requested token count exceeds the model's maximum context length of "
            f"{context_length} tokens. You requested a total of {prompt_len + max_new} tokens: "
            f"{prompt_len} tokens from the input messages and {max_new} tokens for the completion."
        )


def parse_generate(
    body: Mapping[str, Any], tok: Tokenizer, config: SimWorkerConfig, context_length: int
) -> ApiRequest:
    text, input_ids = body.get("text"), body.get("input_ids")
    if text is not None:
        batch = isinstance(text, list)
        texts = text if batch else [text]
        if not all(isinstance(t, str) for t in texts):
            raise BadRequest("'text' must be a string or a list of strings")
        prompts = [tuple(tok.encode(t)) for t in texts]
    elif input_ids is not None:
        batch = bool(input_ids) and isinstance(input_ids[0], list)
        prompts = [_token_list(x, "input_ids") for x in (input_ids if batch else [input_ids])]
    else:
        raise BadRequest("Either text or input_ids should be provided.")
    kv = parse_kv_directive(body)
    items: list[GenRequest] = []
    for i, prompt in enumerate(prompts):
        params = _pick(body.get("sampling_params") or {}, i) or {}
        if not isinstance(params, Mapping):
            raise BadRequest("'sampling_params' must be an object")
        max_new = _opt_int(params, "max_new_tokens")
        max_new = config.default_max_new_tokens if max_new is None else max_new
        _check_budget(len(prompt), max_new, context_length)
        rid = _pick(body.get("rid"), i) if body.get("rid") is not None else None
        items.append(
            GenRequest(
                rid=str(rid) if rid is not None else uuid.uuid4().hex,
                prompt_ids=prompt,
                max_new_tokens=max_new,
                stop=_stop(params.get("stop")),
                ignore_eos=bool(params.get("ignore_eos", False)),
                seed=_opt_int(params, "sampling_seed"),
                bootstrap=_bootstrap(body, i, config),
                kv=kv,
                cache_namespace=_cache_namespace(body, i),
            )
        )
    return ApiRequest(tuple(items), stream=bool(body.get("stream")), batch=batch)


def _openai_common(body: Mapping[str, Any], config: SimWorkerConfig) -> tuple[int, bool]:
    if (body.get("n") or 1) != 1:
        raise BadRequest("the simulated worker supports only n=1")
    max_new = _opt_int(body, "max_completion_tokens")
    if max_new is None:
        max_new = _opt_int(body, "max_tokens")
    opts = body.get("stream_options") or {}
    include_usage = bool(opts.get("include_usage")) if isinstance(opts, Mapping) else False
    return (config.default_max_new_tokens if max_new is None else max_new), include_usage


def parse_chat(
    body: Mapping[str, Any], tok: Tokenizer, config: SimWorkerConfig, context_length: int
) -> ApiRequest:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty list")
    if not all(isinstance(m, Mapping) for m in messages):
        raise BadRequest("every message must be an object")
    tools = body.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise BadRequest("'tools' must be a list")
    if body.get("input_ids") is not None:
        prompt = _token_list(body["input_ids"], "input_ids")
    else:
        try:
            prompt = tuple(tok.encode(render_chat(messages, tools)))
        except ChatTemplateError as exc:
            raise BadRequest(str(exc)) from exc
    max_new, include_usage = _openai_common(body, config)
    _check_budget(len(prompt), max_new, context_length)
    item = GenRequest(
        rid=str(body.get("rid") or uuid.uuid4().hex),
        prompt_ids=prompt,
        max_new_tokens=max_new,
        stop=_stop(body.get("stop")),
        ignore_eos=bool(body.get("ignore_eos", False)),
        seed=_opt_int(body, "seed"),
        tool=choose_tool(body),
        bootstrap=_bootstrap(body, 0, config),
        kv=parse_kv_directive(body),
        cache_namespace=_cache_namespace(body),
    )
    model = str(body.get("model") or "default")
    return ApiRequest((item,), bool(body.get("stream")), model=model, include_usage=include_usage)


def parse_completion(
    body: Mapping[str, Any], tok: Tokenizer, config: SimWorkerConfig, context_length: int
) -> ApiRequest:
    prompt_in: Any = body.get("prompt")
    if isinstance(prompt_in, list) and len(prompt_in) == 1 and isinstance(prompt_in[0], str):
        prompt_in = prompt_in[0]
    if isinstance(prompt_in, str):
        prompt: Sequence[int] = tok.encode(prompt_in)
    elif isinstance(prompt_in, list):
        prompt = _token_list(prompt_in, "prompt")
    else:
        raise BadRequest("'prompt' must be a string or a list of token ids")
    max_new, include_usage = _openai_common(body, config)
    _check_budget(len(prompt), max_new, context_length)
    item = GenRequest(
        rid=str(body.get("rid") or uuid.uuid4().hex),
        prompt_ids=tuple(prompt),
        max_new_tokens=max_new,
        stop=_stop(body.get("stop")),
        ignore_eos=bool(body.get("ignore_eos", False)),
        seed=_opt_int(body, "seed"),
        bootstrap=_bootstrap(body, 0, config),
        kv=parse_kv_directive(body),
        cache_namespace=_cache_namespace(body),
    )
    model = str(body.get("model") or "default")
    return ApiRequest((item,), bool(body.get("stream")), model=model, include_usage=include_usage)
