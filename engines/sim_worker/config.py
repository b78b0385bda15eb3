"""The simulated worker's settings: one frozen dataclass, built by the CLI or by tests."""

from __future__ import annotations

from dataclasses import dataclass

ROLES = ("prefill", "decode", "null")


@dataclass(frozen=True, slots=True)
class SimWorkerConfig:
    role: str
    """SGLang's `--disaggregation-mode`: "prefill", "decode" or "null" (both halves here)."""
    host: str = "127.0.0.1"
    port: int = 30000
    bootstrap_port: int = 8998
    """Prefill: where its bootstrap server listens. All roles: used when a request's
    `bootstrap_port` is null, as SGLang substitutes its own `--disaggregation-bootstrap-port`."""
    served_model_name: str = "tiny"
    engine_model: str = "tiny"
    """Key of `engines.engine_model.MODELS`: whose prefill/decode times are modelled."""
    seed: int = 0
    tokenizer_path: str | None = None
    """None: the built-in word-piece tokenizer; else a HuggingFace `tokenizer.json`."""
    waiting_timeout_s: float = 300.0
    """Decode: how long it waits for the prefill of its room (SGLang's WAITING_TIMEOUT)."""
    bootstrap_timeout_s: float = 300.0
    """Prefill: how long a published room result is kept for its decode to collect."""
    enable_cache_report: bool = True
    page_size: int = 64
    max_running_requests: int = 256
    max_total_num_tokens: int = 262144
    """Size of the modelled KV pool in tokens; also bounds the prefix cache."""
    prefix_cache_pages: int | None = None
    """Pages the prefix cache may hold; None: max_total_num_tokens // page_size."""
    time_scale: float = 1.0
    """Multiplies every modelled duration; 0 never sleeps (fast tests)."""
    default_max_new_tokens: int = 128
    """Output budget when a request names none (SGLang's /generate default is 128)."""
    min_natural_tokens: int = 8
    max_natural_tokens: int = 48
    """Unless `ignore_eos`, an answer ends with EOS after a seeded length in this range."""
    startup_delay_s: float = 0.0
    """Models warm-up: /health and /health_generate answer 503 this long after start."""
    max_rooms: int = 65536
    """Bound on room results a prefill keeps for decodes that have not collected them yet."""
    kv_store: str | None = None
    """Where the node's KV blocks live: `http://host:port` (a `kvstore.store_server`, the
    embedded store shared by one `dualpath up`), `mooncake://host:port` (a Mooncake master),
    `memory` (in this process only) or None (no store: the local prefix cache only)."""
    kv_scale: float = 256.0
    """Stored block bytes = modelled bytes / kv_scale (time is modelled on the full size)."""
    kv_segment_bytes: int = 64 << 20
    """Mooncake: the memory this worker contributes to the store (its node's segment)."""
    snic_gbps: float | None = None
    """Storage NIC bandwidth in GB/s; None: the engine model's node default."""
    cnic_gbps: float | None = None
    """Compute NIC bandwidth in GB/s; None: the engine model's node default."""
    stage_timeout_s: float = 30.0
    """Read path `de`: how long staged blocks wait for the prefill, and it for them."""
    max_staged_rooms: int = 1024
    max_staged_bytes: int = 256 << 20
    """Bounds on blocks staged for prefills that have not pulled them yet (oldest dropped)."""
    log_level: str = "warning"

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, not {self.role!r}")
        if self.page_size <= 0:
            raise ValueError("page_size must be positive")
        if self.time_scale < 0:
            raise ValueError("time_scale must not be negative")
        if self.kv_scale < 1:
            raise ValueError("kv_scale must be at least 1")
        if any(b is not None and b <= 0 for b in (self.snic_gbps, self.cnic_gbps)):
            raise ValueError("NIC bandwidths must be positive")
        if not 1 <= self.min_natural_tokens <= self.max_natural_tokens:
            raise ValueError("need 1 <= min_natural_tokens <= max_natural_tokens")

    @property
    def cache_pages(self) -> int:
        if self.prefix_cache_pages is not None:
            return self.prefix_cache_pages
        return max(1, self.max_total_num_tokens // self.page_size)
