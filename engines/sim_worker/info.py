"""Info and load bodies: /server_info, /model_info, /v1/models, /get_load, /v1/loads."""

from __future__ import annotations

import dataclasses
import datetime
import time
from typing import Any

from engines.sim_worker.config import SimWorkerConfig
from engines.sim_worker.inputs import READ_PATHS
from engines.sim_worker.worker import SimWorker

VERSION = "0.5.5-dualpath-sim"


def server_info(config: SimWorkerConfig, worker: SimWorker, context_length: int) -> dict[str, Any]:
    load = worker.load()
    return {
        "model_path": config.engine_model,
        "tokenizer_path": config.tokenizer_path or "wordpiece",
        "served_model_name": config.served_model_name,
        "host": config.host,
        "port": config.port,
        "tp_size": 1,
        "dp_size": 1,
        "pp_size": 1,
        "page_size": config.page_size,
        "context_length": context_length,
        "max_running_requests": config.max_running_requests,
        "max_total_num_tokens": config.max_total_num_tokens,
        "max_req_input_len": context_length - 8,
        "random_seed": config.seed,
        "disaggregation_mode": config.role,
        "disaggregation_transfer_backend": "mooncake",
        "disaggregation_bootstrap_port": config.bootstrap_port,
        "disaggregation_ib_device": None,
        "enable_hierarchical_cache": False,
        "hicache_storage_backend": None,
        "enable_cache_report": config.enable_cache_report,
        "enable_metrics": True,
        "internal_states": [
            {
                "last_gen_throughput": load.gen_throughput,
                "avg_spec_accept_length": None,
                "num_running_reqs": load.num_running_reqs,
                "num_waiting_reqs": load.num_waiting_reqs,
            }
        ],
        "version": VERSION,
        "dualpath_sim": True,
        "dualpath_time_scale": config.time_scale,
        "dualpath_kv": _kv_info(worker),
    }


def _kv_info(worker: SimWorker) -> dict[str, Any] | None:
    """What the gateway needs to send the `dualpath` extension; None: no KV store here."""
    kv = worker.kv
    if kv is None:
        return None
    node = worker.runner.links
    return {
        "read_paths": list(READ_PATHS),
        "store": kv.store.name,
        "block_tokens": kv.block_tokens,
        "kv_bytes_per_token": kv.shape.kv_bytes_per_token,
        "kv_scale": kv.shape.scale,
        "snic_bytes_per_s": node.snic.bytes_per_s,
        "cnic_bytes_per_s": node.cnic.bytes_per_s,
    }


def _kv_load(worker: SimWorker) -> dict[str, Any]:
    """The node's link queues and what its KV I/O did (counters since start)."""
    links = worker.runner.links
    kv = worker.kv
    return {
        "read_q_bytes": links.snic.queued_bytes,
        "read_q_transfers": links.snic.num_queued,
        "cnic_q_bytes": links.cnic.queued_bytes,
        "snic_moved_bytes": links.snic.moved_bytes,
        "cnic_moved_bytes": links.cnic.moved_bytes,
        "kv": dataclasses.asdict(kv.counters) if kv is not None else None,
    }


def model_info(config: SimWorkerConfig) -> dict[str, Any]:
    return {
        "model_path": config.engine_model,
        "tokenizer_path": config.tokenizer_path or "wordpiece",
        "is_generation": True,
        "preferred_sampling_params": None,
        "weight_version": "default",
        "has_image_understanding": False,
        "has_audio_understanding": False,
        "model_type": "dualpath-sim",
        "architectures": ["DualpathSimForCausalLM"],
    }


def model_card(config: SimWorkerConfig, created: float, context_length: int) -> dict[str, Any]:
    name = config.served_model_name
    return {
        "id": name,
        "object": "model",
        "created": int(created),
        "owned_by": "sglang",
        "root": name,
        "parent": None,
        "max_model_len": context_length,
    }


def get_load(worker: SimWorker) -> list[dict[str, Any]]:
    load = worker.load()
    return [
        {
            "dp_rank": 0,
            "num_reqs": load.num_running_reqs + load.num_waiting_reqs,
            "num_waiting_reqs": load.num_waiting_reqs,
            "num_tokens": load.num_used_tokens,
            "num_pending_tokens": max(load.max_total_num_tokens - load.num_used_tokens, 0),
            "ts_tic": time.monotonic(),
        }
    ]


def _rank_load(worker: SimWorker) -> dict[str, Any]:
    load = worker.load()
    cfg = worker.config
    return {
        "dp_rank": 0,
        "timestamp": time.monotonic(),
        "num_running_reqs": load.num_running_reqs,
        "num_waiting_reqs": load.num_waiting_reqs,
        "num_used_tokens": load.num_used_tokens,
        "num_total_tokens": load.num_used_tokens,
        "max_total_num_tokens": load.max_total_num_tokens,
        "token_usage": load.token_usage,
        "gen_throughput": load.gen_throughput,
        "cache_hit_rate": load.cache_hit_rate,
        "utilization": 0.0 if worker.runner.idle else 1.0,
        "max_running_requests": cfg.max_running_requests,
        "memory": {
            "weight_gb": 0.0,
            "kv_cache_gb": 0.0,
            "graph_gb": 0.0,
            "token_capacity": load.max_total_num_tokens,
        },
        "disaggregation": {
            "mode": cfg.role,
            "prefill_prealloc_queue_reqs": load.prefill_prealloc_queue_reqs,
            "prefill_inflight_queue_reqs": load.prefill_inflight_queue_reqs,
            "decode_prealloc_queue_reqs": load.decode_prealloc_queue_reqs,
            "decode_transfer_queue_reqs": load.decode_transfer_queue_reqs,
            "decode_retracted_queue_reqs": 0,
            "kv_transfer_speed_gb_s": 0.0,
            "kv_transfer_latency_ms": 0.0,
        },
        "queues": {"waiting": load.num_waiting_reqs, "grammar": 0, "paused": 0, "retracted": 0},
        "dualpath": _kv_load(worker),
    }


def loads(worker: SimWorker) -> dict[str, Any]:
    return {
        "timestamp": datetime.datetime.now(datetime.UTC).isoformat(),
        "version": VERSION,
        "accelerator": "dualpath-sim",
        "num_accelerators": 1,
        "loads": [_rank_load(worker)],
    }


def loads_prometheus(worker: SimWorker) -> str:
    rank = _rank_load(worker)
    lines: list[str] = []
    for key, value in rank.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or key == "dp_rank":
            continue
        lines.append(f'sglang_{key}{{dp_rank="0"}} {value}')
    for key, value in rank["disaggregation"].items():
        if isinstance(value, int | float):
            lines.append(f'sglang_disagg_{key}{{dp_rank="0"}} {value}')
    return "\n".join(lines) + "\n"
