"""Gateway settings: the one module that reads the environment and the cluster file.

Components receive frozen sub-configs; nothing else looks at `os.environ`.
Environment variables (all optional) use the `DUALPATH_` prefix, e.g. `DUALPATH_MAX_BODY_BYTES`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from engines.pd_client import UpstreamTimeouts
from engines.worker_registry import HealthPolicy
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
class GatewaySettings:
    host: str = "127.0.0.1"
    port: int = 8000
    workers: tuple[WorkerSpec, ...] = ()
    timeouts: UpstreamTimeouts = field(default_factory=UpstreamTimeouts)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    health: HealthPolicy = field(default_factory=HealthPolicy)
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


def load_settings(
    workers: tuple[WorkerSpec, ...] = (),
    *,
    host: str | None = None,
    port: int | None = None,
    redis_url: str | None = None,
    tokenizer: str | None = None,
    policy: str | None = None,
    kv_store: str | None = None,
    env: Mapping[str, str] | None = None,
) -> GatewaySettings:
    """Defaults, then `DUALPATH_*` environment variables, then the CLI's flags."""
    settings = _from_env(GatewaySettings(), os.environ if env is None else env, "DUALPATH_")
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
