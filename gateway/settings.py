"""Gateway settings: the one module that reads the environment and the cluster file.

Components receive frozen sub-configs; nothing else looks at `os.environ`.
Environment variables (all optional) use the `DUALPATH_` prefix and a sub-config's name,
e.g. `DUALPATH_LIMITS_MAX_BODY_BYTES`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from engines.circuit_breaker import BreakerPolicy
from engines.pd_client import UpstreamTimeouts
from engines.worker_registry import HealthPolicy
from gateway.api_keys import ApiKey, KeyRing, keys_from_env, keys_from_file
from gateway.errors import ConfigError
from gateway.scheduler.config import SchedulerConfig
from gateway.scheduler.policies import POLICIES

ROLES = ("prefill", "decode")


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """One upstream SGLang worker named in the cluster file or registered by `dualpath up`."""

    url: str
    role: str
    bootstrap_port: int | None = None
    """Prefill only: its PD bootstrap port; None lets the worker report it in /server_info."""


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    """Input limits; a request over any of them gets a 4xx, never reaches a worker."""

    max_body_bytes: int = 8 * 1024 * 1024
    max_output_tokens: int = 131072
    """Largest `max_tokens` / `max_completion_tokens` accepted."""
    max_header_bytes: int = 32 * 1024
    """Request line plus all header lines; past it the server answers 431 (`serve` only)."""
    max_headers: int = 100
    """Header fields per request; past it 431 (`serve` only)."""
    max_json_depth: int = 64
    """Nesting of arrays and objects in the body (the top-level object is 1); the JSON parser
    refuses past 200 whatever this says."""
    max_messages: int = 10_000
    """Chat `messages` per request."""
    max_message_chars: int = 2_000_000
    """Characters of one message's content (or one completion prompt)."""
    max_total_chars: int = 4_000_000
    """Characters of all messages' content (or all prompts) together."""
    max_stop: int = 16
    """`stop` sequences."""
    max_n: int = 128
    """`n` and `best_of`, and a completion batch: prompts × `n`."""
    max_tools: int = 128
    """`tools` (and legacy `functions`) entries."""


@dataclass(frozen=True, slots=True)
class SessionConfig:
    """Agent sessions and prefix hashes (see `session/`)."""

    redis_url: str = ""
    """Redis shared by gateway replicas (`redis://host:port/db`); empty = the in-process store."""
    redis_timeout_s: float = 0.5
    """Per Redis call; past it the turn is served from the in-process store."""
    redis_retry_s: float = 1.0
    """While Redis is down, how often to try it again."""
    max_sessions: int = 100_000
    """In-process store bound (least recently used evicted)."""
    idle_ttl_s: float = 4 * 3600.0
    """A session unused this long is forgotten."""
    block_tokens: int = 64
    """Tokens per hashed block (SGLang's page size)."""
    tip_candidates: int = 8
    """Unnamed turns: trailing message boundaries tried as the end of the last turn."""
    max_checkpoints: int = 4096
    """Per session; older message checkpoints are thinned past it."""
    max_turn_facts: int = 32
    """Per-turn facts kept per session."""
    secret: str = ""
    """Mixed into every hash chain so hashes cannot be computed outside the gateway."""


@dataclass(frozen=True, slots=True)
class KVConfig:
    """The gateway's view of the KV store the workers share (see `gateway/hit_probe.py`)."""

    store_url: str = ""
    """`memory`, `http://HOST:PORT` or `mooncake://HOST:PORT` (`kvstore.open_store`): each
    turn's estimated hit is checked against it before scheduling; empty = not checked."""
    probe_timeout_s: float = 0.05
    """Longest wait for that check; past it the turn keeps the estimate."""


KV_STORE_SCHEMES = ("http://", "https://", "mooncake://")


@dataclass(frozen=True, slots=True)
class SchedulingConfig:
    """The gateway's side of scheduling; the policy's own knobs are `SchedulerConfig`."""

    hold_timeout_s: float = 120.0
    """A request held this long without a placement gets 503 + Retry-After."""
    engine_model: str = "ds-v3.2-660b"
    """Cost model (`engines.engine_model.MODELS`) of workers whose /server_info names none we
    know (stock SGLang): the scheduler's predictions start from it, feedback corrects them."""


@dataclass(frozen=True, slots=True)
class RetryConfig:
    """Failover of a turn whose worker failed before the first byte (`gateway/failover.py`)."""

    max_attempts: int = 3
    """Tries per turn, the first included (`DUALPATH_RETRY_MAX_ATTEMPTS`); 1 = no retry."""


@dataclass(frozen=True, slots=True)
class RateLimitConfig:
    """Per-key limits (`gateway/rate_limits.py`); a keys-file entry's own values win. Shared
    through Redis when `sessions.redis_url` is set."""

    requests_per_min: int = 0
    """Default requests per minute of a key that sets none; 0 = unlimited."""
    tokens_per_min: int = 0
    """Default tokens per minute (prompt + max_tokens reserved); 0 = unlimited."""
    max_buckets: int = 10_000
    """In-process limiter bound (least recently used dropped)."""
    redis_timeout_s: float = 0.05
    """Per Redis call; past it this request is limited in-process."""
    redis_retry_s: float = 1.0
    """While Redis is down, how often to try it again."""


@dataclass(frozen=True, slots=True)
class GatewaySettings:
    host: str = "127.0.0.1"
    port: int = 8000
    workers: tuple[WorkerSpec, ...] = ()
    timeouts: UpstreamTimeouts = field(default_factory=UpstreamTimeouts)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    health: HealthPolicy = field(default_factory=HealthPolicy)
    """`DUALPATH_HEALTH_INTERVAL_S`, `DUALPATH_HEALTH_FAILURE_THRESHOLD`, …: active checks."""
    breaker: BreakerPolicy = field(default_factory=BreakerPolicy)
    """`DUALPATH_BREAKER_FAILURE_THRESHOLD`, `DUALPATH_BREAKER_COOL_DOWN_S`: passive checks."""
    retry: RetryConfig = field(default_factory=RetryConfig)
    shutdown_timeout_s: float = 30.0
    """On SIGTERM, how long in-flight requests may run on before they are cut
    (`DUALPATH_SHUTDOWN_TIMEOUT_S`); no new connection is accepted meanwhile."""
    loads_interval_s: float = 0.25
    """How often every healthy worker's `/v1/loads` is read (the scheduler's reconciliation)."""
    retry_after_s: int = 2
    """`Retry-After` sent with 503 when no healthy worker can take a request."""
    upstream_connections: int = 1024
    """Connection pool size towards the workers."""
    sessions: SessionConfig = field(default_factory=SessionConfig)
    kv: KVConfig = field(default_factory=KVConfig)
    """`DUALPATH_KV_STORE_URL`, `DUALPATH_KV_PROBE_TIMEOUT_S`."""
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    """`DUALPATH_SCHEDULER_POLICY`, `DUALPATH_SCHEDULER_TTFT_S`, …: every field by name."""
    scheduling: SchedulingConfig = field(default_factory=SchedulingConfig)
    api_keys: tuple[ApiKey, ...] = ()
    """`DUALPATH_API_KEYS_FILE` (or `--api-keys-file`) and `DUALPATH_API_KEYS`, hashed
    (`gateway/api_keys.py`); empty = an open gateway, no key required."""
    rate_limits: RateLimitConfig = field(default_factory=RateLimitConfig)
    """`DUALPATH_RATE_LIMITS_REQUESTS_PER_MIN`, `DUALPATH_RATE_LIMITS_TOKENS_PER_MIN`, …"""
    tokenizer: str = ""
    """The workers' HuggingFace tokenizer.json; empty = the built-in tokenizer."""
    log_level: str = "warning"
    trace_content: bool = False
    """`DUALPATH_TRACE_CONTENT`: put prompt and completion text in trace span events (tracing
    itself is set by the standard `OTEL_*` variables; see `gateway/tracing.py`)."""


def _coerce(value: str, like: Any) -> Any:
    if isinstance(like, bool):
        return value.lower() in ("1", "true", "yes", "on")
    if isinstance(like, int):
        return int(value)
    if isinstance(like, float):
        return float(value)
    return value


def _from_env(obj: Any, env: Mapping[str, str], prefix: str) -> Any:
    """Override any scalar field of a frozen config from `PREFIX<FIELD>` variables."""
    changes: dict[str, Any] = {}
    for f in fields(obj):
        current = getattr(obj, f.name)
        name = prefix + f.name.upper()
        if hasattr(current, "__dataclass_fields__"):
            changes[f.name] = _from_env(current, env, name + "_")
        elif name in env and isinstance(current, str | int | float | bool):
            try:
                changes[f.name] = _coerce(env[name], current)
            except ValueError as exc:
                raise ConfigError(f"{name}={env[name]!r}: {exc}") from exc
    return replace(obj, **changes)


def _worker_specs(raw: Any, source: str) -> tuple[WorkerSpec, ...]:
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f"{source}: 'workers' must be a non-empty list")
    specs: list[WorkerSpec] = []
    for i, item in enumerate(raw):
        if not isinstance(item, Mapping) or "url" not in item or "role" not in item:
            raise ConfigError(f"{source}: workers[{i}] needs 'url' and 'role'")
        role = str(item["role"])
        if role not in ROLES:
            raise ConfigError(f"{source}: workers[{i}].role must be one of {ROLES}, not {role!r}")
        port = item.get("bootstrap_port")
        specs.append(WorkerSpec(str(item["url"]).rstrip("/"), role, int(port) if port else None))
    return tuple(specs)


def load_cluster_file(path: str | Path) -> tuple[WorkerSpec, ...]:
    """Workers from a YAML cluster file: `workers: [{url, role, bootstrap_port?}, ...]`."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read cluster file {path}: {exc}") from exc
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path}: expected a mapping with a 'workers' list")
    return _worker_specs(data.get("workers"), str(path))


def _api_keys(env: Mapping[str, str], keys_file: str | Path | None) -> tuple[ApiKey, ...]:
    """The keys file (the flag, else `DUALPATH_API_KEYS_FILE`), then `DUALPATH_API_KEYS`."""
    path = keys_file if keys_file is not None else env.get("DUALPATH_API_KEYS_FILE", "")
    keys = keys_from_file(path) if path else ()
    keys += keys_from_env(env.get("DUALPATH_API_KEYS", ""))
    KeyRing(keys)  # a key configured twice fails the start, not the first request
    return keys


def _check_rate_limits(limits: RateLimitConfig) -> None:
    if limits.requests_per_min < 0 or limits.tokens_per_min < 0:
        raise ConfigError("default rate limits must be non-negative (0 = unlimited)")
    if limits.max_buckets < 1:
        raise ConfigError(f"rate-limit max_buckets must be positive, not {limits.max_buckets}")
    if not (limits.redis_timeout_s > 0 and limits.redis_retry_s > 0):  # NaN fails too
        raise ConfigError("rate-limit Redis timeout and retry interval must be positive")


def load_settings(
    workers: tuple[WorkerSpec, ...] = (),
    *,
    host: str | None = None,
    port: int | None = None,
    redis_url: str | None = None,
    tokenizer: str | None = None,
    policy: str | None = None,
    kv_store: str | None = None,
    api_keys_file: str | Path | None = None,
    env: Mapping[str, str] | None = None,
) -> GatewaySettings:
    """Defaults, then `DUALPATH_*` environment variables, then the CLI's flags."""
    env = os.environ if env is None else env
    settings = _from_env(GatewaySettings(), env, "DUALPATH_")
    settings = replace(settings, api_keys=_api_keys(env, api_keys_file))
    _check_rate_limits(settings.rate_limits)
    scheduler = settings.scheduler if policy is None else replace(settings.scheduler, policy=policy)
    if scheduler.policy not in POLICIES:
        known = ", ".join(POLICIES)
        raise ConfigError(f"unknown scheduling policy {scheduler.policy!r}; known: {known}")
    sessions = settings.sessions
    if redis_url is not None:
        sessions = replace(sessions, redis_url=redis_url)
    if sessions.redis_url and not sessions.redis_url.startswith(
        ("redis://", "rediss://", "unix://")
    ):
        raise ConfigError(f"redis URL must start with redis://, not {sessions.redis_url!r}")
    kv = settings.kv if kv_store is None else replace(settings.kv, store_url=kv_store)
    if kv.store_url not in ("", "memory") and not kv.store_url.startswith(KV_STORE_SCHEMES):
        raise ConfigError(
            f"KV store URL must be memory, http://HOST:PORT or mooncake://HOST:PORT, "
            f"not {kv.store_url!r}"
        )
    if not kv.probe_timeout_s > 0:  # NaN fails too
        raise ConfigError(f"KV probe timeout must be positive, not {kv.probe_timeout_s}")
    return replace(
        settings,
        workers=workers,
        host=settings.host if host is None else host,
        port=settings.port if port is None else port,
        tokenizer=settings.tokenizer if tokenizer is None else tokenizer,
        sessions=sessions,
        kv=kv,
        scheduler=scheduler,
    )
