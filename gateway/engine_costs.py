"""Each worker's cost model, as the scheduler needs it (`gateway.scheduler.cost_model`).

Our simulated workers say which preset they model (`model_path`), their node's NIC bandwidths
(`dualpath_kv`) and their time scale; a stock SGLang worker names a real model, for which the
gateway's configured preset stands in until feedback corrects the predictions.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from engines.engine_model import MODELS, EngineModel
from engines.worker_registry import Worker
from gateway.scheduler.decision import READ_PATHS


@dataclass(frozen=True, slots=True)
class ScaledCost:
    """An `EngineModel` whose times are multiplied by the worker's time scale (0: instant)."""

    model: EngineModel
    time_scale: float = 1.0

    def _rate(self, bytes_per_s: float) -> float:
        return bytes_per_s / self.time_scale if self.time_scale > 0 else float("inf")

    @property
    def snic_bytes_per_s(self) -> float:
        return self._rate(self.model.snic_bytes_per_s)

    @property
    def cnic_bytes_per_s(self) -> float:
        return self._rate(self.model.cnic_bytes_per_s)

    def kv_bytes(self, tokens: float) -> float:
        return self.model.kv_bytes(tokens)

    def prefill_compute_s(self, append_tokens: int, cached_tokens: int) -> float:
        return self.model.prefill_compute_s(append_tokens, cached_tokens) * self.time_scale

    def prefill_marginal_s(self, append_tokens: int, cached_tokens: int) -> float:
        return self.model.prefill_marginal_s(append_tokens, cached_tokens) * self.time_scale

    def decode_step_s(self, batch_size: int, context_tokens: int) -> float:
        return self.model.decode_step_s(batch_size, context_tokens) * self.time_scale


def _number(info: dict[str, Any], key: str) -> float | None:
    value = info.get(key)
    ok = isinstance(value, int | float) and not isinstance(value, bool) and value > 0
    return float(value) if ok else None


def cost_for(worker: Worker, default_model: str) -> ScaledCost:
    info = worker.info
    name = info.get("model_path")
    model = EngineModel.named(name if name in MODELS else default_model)
    kv = info.get("dualpath_kv")
    if isinstance(kv, dict):
        node = model.node
        snic = _number(kv, "snic_bytes_per_s") or node.snic_bytes_per_s
        cnic = _number(kv, "cnic_bytes_per_s") or node.cnic_bytes_per_s
        node = dataclasses.replace(node, snic_bytes_per_s=snic, cnic_bytes_per_s=cnic)
        model = dataclasses.replace(model, node=node)
    scale = info.get("dualpath_time_scale") if info.get("dualpath_sim") else 1.0
    ok = isinstance(scale, int | float) and not isinstance(scale, bool) and scale >= 0
    return ScaledCost(model, float(scale) if ok else 1.0)  # type: ignore[arg-type]


def read_paths_of(worker: Worker) -> frozenset[str]:
    """The read paths a worker takes part in: what its `dualpath_kv` lists, else `pe` only."""
    kv = worker.info.get("dualpath_kv")
    listed = kv.get("read_paths") if isinstance(kv, dict) else None
    if not isinstance(listed, list):
        return frozenset({"pe"})
    return frozenset(p for p in listed if p in READ_PATHS) | {"pe"}
