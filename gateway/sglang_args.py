"""`dualpath sglang-args`: the SGLang launch command and environment of every worker of a cluster.

The cluster file's `workers:` list (`url`, `role`, `bootstrap_port`) is what `dualpath serve`
reads. An optional top-level `sglang:` section, and an optional `sglang:` mapping on each worker,
say how to launch real SGLang workers for it: PD disaggregation over the Mooncake transfer engine,
HiCache with the Mooncake store as its L3 tier, Prometheus metrics and OpenTelemetry traces.
`dualpath serve` ignores both, so one file describes the cluster to the gateway and to SGLang.

    workers:
      - {url: "http://10.0.0.11:30000", role: prefill, bootstrap_port: 8998,
         sglang: {base_gpu_id: 0}}
      - {url: "http://10.0.0.21:30001", role: decode}
    sglang:
      model_path: Qwen/Qwen2.5-7B-Instruct
      mooncake: {master: "10.0.0.1:50051", protocol: rdma}
      otlp_traces_endpoint: "10.0.0.1:4317"

Flags and variables follow SGLang 0.5.23 (`SGLANG_VERSION`): `sglang/srt/arg_groups/fields/`
(`disagg.py`, `memory.py`, `observability.py`, `parallel.py`, `serving.py`), `sglang/srt/environ.py`
and `sglang/srt/mem_cache/storage/mooncake_store/mooncake_store.py` for the `MOONCAKE_*` variables.
A bad file raises `gateway.errors.ConfigError` naming the file and the field.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import typer
import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from gateway.errors import ConfigError

SGLANG_VERSION = "0.5.23"
"""The SGLang release whose flags and environment variables this module emits."""
LAUNCH_MODULE = "sglang.launch_server"

# SGLang's `_parse_global_segment_size` takes bytes or "<n>gb"; anything else fails at its start.
_SEGMENT_SIZE = re.compile(r"\d+(gb)?", re.IGNORECASE)
_HOST_PORT = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[^\s:/\[\]]+):\d{1,5}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_WORKER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _host_port(value: str) -> str:
    if not _HOST_PORT.fullmatch(value):
        raise ValueError(f"expected host:port, not {value!r}")
    return value


def _env_names(env: dict[str, str]) -> dict[str, str]:
    for name in env:
        if not _ENV_NAME.fullmatch(name):
            raise ValueError(f"not an environment variable name: {name!r}")
    return env


HostPort = Annotated[str, AfterValidator(_host_port)]
EnvVars = Annotated[dict[str, str], AfterValidator(_env_names)]


class MooncakeSpec(_Section):
    """Where SGLang's Mooncake HiCache backend and transfer engine find the store."""

    master: HostPort
    """`mooncake_master`'s RPC address, host:port (`MOONCAKE_MASTER`)."""
    metadata_server: str = "P2PHANDSHAKE"
    """`MOONCAKE_TE_META_DATA_SERVER`: P2PHANDSHAKE needs no metadata server, else its URL."""
    protocol: Literal["rdma", "tcp", "efa"] = "rdma"
    """`MOONCAKE_PROTOCOL`, read by the store and by the PD transfer engine alike."""
    device: str = ""
    """`MOONCAKE_DEVICE`: the store's RDMA NICs; empty = auto-discover."""
    global_segment_size: str = "4gb"
    """`MOONCAKE_GLOBAL_SEGMENT_SIZE`: memory each worker gives the pool (bytes or `<n>gb`)."""

    @field_validator("global_segment_size", mode="before")
    @classmethod
    def _segment(cls, value: Any) -> Any:
        text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
        if not isinstance(text, str) or not _SEGMENT_SIZE.fullmatch(text.strip()):
            raise ValueError(f"bytes or '<n>gb', not {value!r}")
        return text.strip()


class HiCacheSpec(_Section):
    """HiCache (GPU → host → Mooncake store) on the prefill; KV offload to the store on decode."""

    ratio: float | None = Field(default=None, gt=0)
    """`--hicache-ratio`: host pool size / GPU pool size (prefill; SGLang's default 2)."""
    size_gb: int | None = Field(default=None, ge=1)
    """`--hicache-size`: host pool in GB, instead of `ratio`."""
    mem_layout: Literal["layer_first", "page_first", "page_first_direct"] = "page_first_direct"
    """The Mooncake backend needs a page-first layout; `page_first_direct` goes with `direct`."""
    io_backend: Literal["direct", "kernel"] = "direct"
    write_policy: Literal["write_back", "write_through", "write_through_selective"] = (
        "write_through"
    )
    prefetch_policy: Literal["best_effort", "wait_complete", "timeout"] = "timeout"
    decode_offload: bool = True
    """Decode writes finished KV to the store (`--disaggregation-decode-enable-offload-kvcache`),
    so the agent's next turn finds it there."""

    @model_validator(mode="after")
    def _one_size(self) -> HiCacheSpec:
        if self.ratio is not None and self.size_gb is not None:
            raise ValueError("give ratio or size_gb, not both")
        return self


class WorkerOverrides(_Section):
    """Per-worker `sglang:` settings; each one left out takes the top-level section's."""

    name: str | None = None  # default `<role>-<n>`
    tp: int | None = Field(default=None, ge=1)
    base_gpu_id: int | None = Field(default=None, ge=0)
    ib_device: str | None = None
    host: str | None = None  # the address the HTTP server binds
    local_hostname: str | None = None
    """Address this worker advertises to the store (default: the host of its URL)."""
    extra_args: tuple[str, ...] = ()
    env: EnvVars = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        if value is not None and not _WORKER_NAME.fullmatch(value):
            raise ValueError("letters, digits, '_', '.' and '-', starting with a letter or digit")
        return value


class SGLangSpec(_Section):
    """The top-level `sglang:` section: what every worker of the cluster runs."""

    model_path: str = Field(min_length=1)
    served_model_name: str | None = None
    """The name clients ask for; prefill and decode must agree (it prefixes the store's keys)."""
    tp: int = Field(default=1, ge=1)
    page_size: int = Field(default=64, ge=1)
    """Tokens per KV page: 64, the gateway's block size (`DUALPATH_SESSIONS_BLOCK_TOKENS`)."""
    host: str = "0.0.0.0"
    python: str = "python3"
    mooncake: MooncakeSpec
    hicache: HiCacheSpec = Field(default_factory=HiCacheSpec)
    ib_device: str | None = None
    """`--disaggregation-ib-device` (PD KV transfer NICs); unset = SGLang picks."""
    otlp_traces_endpoint: HostPort | None = None
    """host:port of an OTLP/gRPC collector; set = `--enable-trace`."""
    extra_args: tuple[str, ...] = ()
    env: EnvVars = Field(default_factory=dict)


class WorkerEntry(_Section):
    """One item of `workers:`: the keys `dualpath serve` reads, plus optional `sglang:`."""

    url: str
    role: Literal["prefill", "decode"]
    bootstrap_port: int | None = Field(default=None, ge=1, le=65535)
    sglang: WorkerOverrides = Field(default_factory=WorkerOverrides)

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        parts = urlsplit(value)
        try:
            port = parts.port
        except ValueError:
            port = None
        if parts.scheme not in ("http", "https") or not parts.hostname or port is None:
            raise ValueError(f"expected http://HOST:PORT with an explicit port, not {value!r}")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _bootstrap_on_prefill(self) -> WorkerEntry:
        if self.bootstrap_port is not None and self.role != "prefill":
            raise ValueError("bootstrap_port belongs to prefill workers only")
        return self


class ClusterFile(BaseModel):
    """A whole cluster file; other top-level keys belong to other tools and are ignored."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    workers: list[WorkerEntry] = Field(min_length=1)
    sglang: SGLangSpec | None = None


@dataclass(frozen=True, slots=True)
class LaunchSpec:
    """What to run for one worker."""

    name: str
    role: str
    url: str
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    """Ordered (name, value) pairs."""


def load_cluster(path: str | Path) -> ClusterFile:
    """Parse and validate a cluster file; `ConfigError` names the file and each bad field."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read cluster file {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping with a 'workers' list")
    try:
        return ClusterFile.model_validate(data)
    except ValidationError as exc:  # one line per bad field, e.g. "f.yaml: workers.0.role: ..."
        lines = (f"{path}: {'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigError("\n".join(lines).replace(": Value error, ", ": ")) from None


def _worker_names(cluster: ClusterFile) -> list[str]:
    counts = {"prefill": 0, "decode": 0}
    names = []
    for w in cluster.workers:
        names.append(w.sglang.name or f"{w.role}-{counts[w.role]}")
        counts[w.role] += 1
    return names


def _check_unique(source: str, cluster: ClusterFile, names: Sequence[str]) -> None:
    seen_names: set[str] = set()
    seen_ports: dict[tuple[str, int], str] = {}
    for name, w in zip(names, cluster.workers, strict=True):
        if name in seen_names:
            raise ConfigError(f"{source}: two workers are named {name!r}")
        seen_names.add(name)
        parts = urlsplit(w.url)
        ports = [parts.port or 0]
        if w.role == "prefill":
            ports.append(w.bootstrap_port or 8998)
        for port in ports:
            key = (parts.hostname or "", port)
            if key in seen_ports:
                raise ConfigError(
                    f"{source}: {name} and {seen_ports[key]} both use {key[0]}:{port}"
                )
            seen_ports[key] = name


def _hicache_args(spec: SGLangSpec, role: str) -> list[str]:
    h = spec.hicache
    if role == "decode" and not h.decode_offload:
        return []
    args: list[str] = []
    if role == "prefill":
        args.append("--enable-hierarchical-cache")
        if h.ratio is not None:
            args += ["--hicache-ratio", f"{h.ratio:g}"]
        if h.size_gb is not None:
            args += ["--hicache-size", str(h.size_gb)]
    args += ["--hicache-mem-layout", h.mem_layout, "--hicache-io-backend", h.io_backend]
    args += ["--hicache-write-policy", h.write_policy]
    args += ["--hicache-storage-backend", "mooncake"]
    args += ["--hicache-storage-prefetch-policy", h.prefetch_policy]
    if role == "decode":
        # SGLang's decode HiCache is this offload path, not --enable-hierarchical-cache.
        args.append("--disaggregation-decode-enable-offload-kvcache")
    return args


def _argv(spec: SGLangSpec, w: WorkerEntry) -> tuple[str, ...]:
    o = w.sglang
    argv = [spec.python, "-m", LAUNCH_MODULE, "--model-path", spec.model_path]
    if spec.served_model_name:
        argv += ["--served-model-name", spec.served_model_name]
    argv += ["--host", o.host or spec.host, "--port", str(urlsplit(w.url).port)]
    argv += ["--tp-size", str(o.tp or spec.tp)]
    if o.base_gpu_id is not None:
        argv += ["--base-gpu-id", str(o.base_gpu_id)]
    argv += ["--page-size", str(spec.page_size)]
    argv += ["--disaggregation-mode", w.role, "--disaggregation-transfer-backend", "mooncake"]
    if w.role == "prefill":
        argv += ["--disaggregation-bootstrap-port", str(w.bootstrap_port or 8998)]
    ib_device = o.ib_device or spec.ib_device
    if ib_device:
        argv += ["--disaggregation-ib-device", ib_device]
    argv += _hicache_args(spec, w.role)
    argv += ["--enable-metrics", "--enable-cache-report"]
    if spec.otlp_traces_endpoint:
        argv += ["--enable-trace", "--otlp-traces-endpoint", spec.otlp_traces_endpoint]
    return (*argv, *spec.extra_args, *o.extra_args)


def _env(spec: SGLangSpec, w: WorkerEntry, name: str) -> tuple[tuple[str, str], ...]:
    m = spec.mooncake
    env = {
        "MOONCAKE_MASTER": m.master,
        "MOONCAKE_TE_META_DATA_SERVER": m.metadata_server,
        "MOONCAKE_PROTOCOL": m.protocol,
        "MOONCAKE_DEVICE": m.device,
        "MOONCAKE_GLOBAL_SEGMENT_SIZE": m.global_segment_size,
        "MOONCAKE_LOCAL_HOSTNAME": w.sglang.local_hostname or urlsplit(w.url).hostname or "",
    }
    if m.protocol == "tcp":
        env["MC_FORCE_TCP"] = "1"  # the PD transfer engine too, whatever its default transport
    if spec.otlp_traces_endpoint:
        env["OTEL_SERVICE_NAME"] = f"sglang-{name}"  # SGLang's fallback for --otlp-service-name
    env |= spec.env
    env |= w.sglang.env
    return tuple(env.items())


def launch_specs(cluster: ClusterFile, source: str = "cluster file") -> list[LaunchSpec]:
    """One `LaunchSpec` per worker, in file order."""
    if cluster.sglang is None:
        raise ConfigError(
            f"{source}: no 'sglang:' section; it needs at least sglang.model_path "
            "and sglang.mooncake.master"
        )
    names = _worker_names(cluster)
    _check_unique(source, cluster, names)
    spec = cluster.sglang
    return [
        LaunchSpec(name, w.role, w.url, _argv(spec, w), _env(spec, w, name))
        for name, w in zip(names, cluster.workers, strict=True)
    ]


def _shell_lines(argv: Sequence[str]) -> list[str]:
    """The command with each flag and its values on one line."""
    lines = [" ".join(shlex.quote(a) for a in argv[:3])]
    for arg in argv[3:]:
        if arg.startswith("--") or len(lines) == 1:
            lines.append(shlex.quote(arg))
        else:
            lines[-1] += " " + shlex.quote(arg)
    return lines


def render_shell(specs: Sequence[LaunchSpec]) -> str:
    blocks = []
    for s in specs:
        head = [f"# {s.name}: {s.role} at {s.url} (flags of SGLang {SGLANG_VERSION})"]
        env = [f"{k}={shlex.quote(v)}" for k, v in s.env]
        cmd = _shell_lines(s.argv)
        body = env + [cmd[0]] + ["  " + line for line in cmd[1:]]
        blocks.append("\n".join([*head, " \\\n".join(body)]))
    return "\n\n".join(blocks)


def render_json(specs: Sequence[LaunchSpec]) -> str:
    workers = [
        {"name": s.name, "role": s.role, "url": s.url, "argv": list(s.argv), "env": dict(s.env)}
        for s in specs
    ]
    return json.dumps({"sglang_version": SGLANG_VERSION, "workers": workers}, indent=2)


class OutputFormat(StrEnum):
    shell = "shell"
    json = "json"


def sglang_args(
    config: Annotated[
        Path, typer.Option(help="YAML cluster file: workers plus an sglang: section.")
    ],
    output_format: Annotated[
        OutputFormat, typer.Option("--format", help="shell (runnable lines) or json.")
    ] = OutputFormat.shell,
    worker: Annotated[
        str | None, typer.Option(help="Only the worker of this name (e.g. prefill-0).")
    ] = None,
) -> None:
    """Print the SGLang launch command and environment of every worker of a cluster file."""
    try:
        specs = launch_specs(load_cluster(config), str(config))
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    if worker is not None:
        specs = [s for s in specs if s.name == worker]
        if not specs:
            typer.echo(f"error: {config}: no worker named {worker!r}", err=True)
            raise typer.Exit(2)
    typer.echo(render_json(specs) if output_format is OutputFormat.json else render_shell(specs))
