"""The engine cost model reproduces the physics named in DESIGN.md, and stays pure."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

from engines.engine_core import DecodeBatch, DecodeSeq, PrefillJob, PrefillQueue
from engines.engine_model import MODELS, EngineModel

PURE_MODULES = ("engines/engine_model.py", "engines/engine_core.py")
BANNED = {"asyncio", "time", "socket", "httpx", "aiohttp", "random", "os", "threading", "fastapi"}


@pytest.mark.parametrize("path", PURE_MODULES)
def test_cost_model_modules_import_no_io_or_clock(path: str) -> None:
    tree = ast.parse((Path(__file__).parents[2] / path).read_text())
    imported = {
        (n.module or "").split(".")[0] if isinstance(n, ast.ImportFrom) else a.name.split(".")[0]
        for n in ast.walk(tree)
        if isinstance(n, ast.Import | ast.ImportFrom)
        for a in n.names
    }
    assert not imported & BANNED


def test_kv_bytes_per_token_follow_the_public_configs() -> None:
    assert MODELS["qwen2.5-32b"].kv_bytes_per_token == 256 * 1024  # 64 layers × 8 × 128 × 2 × 2
    assert MODELS["ds-v3.2-660b"].kv_bytes_per_token == (656 + 132) * 61
    assert MODELS["ds-27b"].kv_bytes_per_token == (656 + 68) * 30


@pytest.mark.parametrize("name", ["ds-v3.2-660b", "ds-27b", "qwen2.5-32b"])
def test_agent_turns_are_bound_by_loading_not_computing(name: str) -> None:
    """DualPath's premise: a turn appending ~429 tokens to ~32.7K cached ones reads for longer
    through one storage NIC than it computes (paper §3)."""
    m = EngineModel.named(name)
    assert m.storage_read_s(32_700) > m.prefill_compute_s(429, 32_700)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_times_grow_with_work(name: str) -> None:
    m = EngineModel.named(name)
    assert m.prefill_compute_s(2048, 0) > m.prefill_compute_s(512, 0) > 0
    assert m.prefill_compute_s(512, 16_000) > m.prefill_compute_s(512, 0)
    assert m.decode_step_s(64, 64 * 8000) > m.decode_step_s(1, 8000) > 0
    assert m.decode_step_s(0, 0) == 0


def test_hopper_decode_fits_the_papers_tpot_slo_at_moderate_batch() -> None:
    m = EngineModel.named("ds-v3.2-660b")
    assert m.decode_step_s(64, 64 * 32_700) < 0.050  # TPOT SLO 50 ms


def test_fp8_gemms_halve_only_the_linear_layers_time() -> None:
    """DeepSeek's weights are FP8 and its GEMMs run in FP8 (DeepGEMM), twice the bf16 rate; the
    attention stays at the bf16 rate."""
    fp8 = EngineModel.named("ds-v3.2-660b")
    bf16 = EngineModel(dataclasses.replace(fp8.model, gemm_speedup=1.0), fp8.node)
    linear_bf16 = 2.0 * fp8.model.active_params * 1000
    assert bf16.prefill_flops(1000, 30_000) - fp8.prefill_flops(1000, 30_000) == pytest.approx(
        linear_bf16 / 2
    )
    assert MODELS["qwen2.5-32b"].gemm_speedup == 1.0  # bf16 weights


def test_the_kv_pool_is_what_the_weights_leave_and_660b_needs_more_than_80_gb_gpus() -> None:
    big = EngineModel.named("ds-v3.2-660b")
    n = big.node
    left = n.gpus * (n.hbm_bytes_per_gpu - n.reserved_bytes_per_gpu) - 671e9
    assert big.kv_pool_tokens == int(left / big.model.kv_bytes_per_token)
    h100 = dataclasses.replace(n, hbm_bytes_per_gpu=80e9)
    with pytest.raises(ValueError, match="do not fit"):
        _ = EngineModel(big.model, h100).kv_pool_tokens
    # The same node holds many more tokens of a small model's smaller KV.
    assert EngineModel.named("ds-27b").kv_pool_tokens > 5 * big.kv_pool_tokens


def test_unknown_model_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="known"):
        EngineModel.named("gpt-9")


def test_prefill_queue_is_fifo_one_forward_at_a_time() -> None:
    q = PrefillQueue(EngineModel.named("tiny"), max_waiting=2)
    assert q.add(PrefillJob("a", 100, 0)) and q.add(PrefillJob("b", 10, 0))
    assert not q.add(PrefillJob("c", 10, 0))
    assert q.abort("b")
    step = q.next_step()
    assert step is not None and step.rids == ("a",) and step.duration_s > 0
    assert q.add(PrefillJob("b", 10, 0))
    assert q.next_step() is None  # one forward at a time
    q.finish_step(step)
    nxt = q.next_step()
    assert nxt is not None and nxt.rids == ("b",)


def test_prefill_batches_up_to_the_token_budget_and_shares_the_fixed_cost() -> None:
    model = EngineModel.named("ds-v3.2-660b")
    q = PrefillQueue(model, max_batch_tokens=1000, layerwise=True)
    for rid in "abc":
        q.add(PrefillJob(rid, 400, 30_000))
    step = q.next_step()
    assert step is not None and step.rids == ("a", "b")  # c would pass 1,000 new tokens
    alone = model.prefill_compute_s(400, 30_000)
    assert step.duration_s == pytest.approx(2 * alone - model.node.step_overhead_s)
    q.finish_step(step)
    rest = q.next_step()
    assert rest is not None and rest.rids == ("c",)
    assert rest.duration_s == pytest.approx(alone)


def test_prefill_without_layerwise_copies_the_loaded_kv_first() -> None:
    model = EngineModel.named("ds-v3.2-660b")
    plain, layerwise = PrefillQueue(model), PrefillQueue(model, layerwise=True)
    for q in (plain, layerwise):
        q.add(PrefillJob("a", 400, 30_000))
    a, b = plain.next_step(), layerwise.next_step()
    assert a is not None and b is not None
    assert a.duration_s - b.duration_s == pytest.approx(model.h2d_s(30_000))
    assert model.h2d_s(30_000) == pytest.approx(model.kv_bytes(30_000) / model.cnic_bytes_per_s)


def test_decode_batch_is_continuous_and_tpot_rises_with_load() -> None:
    model = EngineModel.named("qwen2.5-32b")
    batch = DecodeBatch(model)
    batch.add(DecodeSeq("a", context_tokens=1000, max_new_tokens=2))
    alone = batch.next_step()
    assert alone is not None and alone.rids == ("a",)
    for i in range(63):
        batch.add(DecodeSeq(f"s{i}", context_tokens=30_000, max_new_tokens=5))
    emitted = batch.finish_step(alone)
    assert [(e.rid, e.index, e.finished) for e in emitted] == [("a", 0, False)]
    crowded = batch.next_step()  # the newcomers join between steps
    assert crowded is not None and len(crowded.rids) == 64
    assert crowded.duration_s > alone.duration_s
    done = [e.rid for e in batch.finish_step(crowded) if e.finished]
    assert done == ["a"] and "a" not in batch.running


def test_decode_batch_waits_for_kv_memory_but_never_wedges() -> None:
    batch = DecodeBatch(EngineModel.named("tiny"), max_total_tokens=1000)
    batch.add(DecodeSeq("big", context_tokens=5000, max_new_tokens=1))
    batch.add(DecodeSeq("next", context_tokens=100, max_new_tokens=1))
    step = batch.next_step()
    assert step is not None and step.rids == ("big",)  # admitted alone although oversized
    batch.finish_step(step)
    step = batch.next_step()
    assert step is not None and step.rids == ("next",)
    assert batch.abort("next") and batch.finish_step(step) == []


def test_other_nics_and_a_slow_down_change_only_what_they_say() -> None:
    from engines.engine_model import GB, EngineModel

    base = EngineModel.named("tiny")
    nics = base.with_nics(0.02, None)
    assert nics.snic_bytes_per_s == 0.02 * GB and nics.cnic_bytes_per_s == base.cnic_bytes_per_s
    slow = base.slowed(4.0)
    assert slow.prefill_compute_s(300, 2000) == pytest.approx(4 * base.prefill_compute_s(300, 2000))
    assert slow.decode_step_s(8, 9000) == pytest.approx(4 * base.decode_step_s(8, 9000))
    assert slow.storage_read_s(5000) == pytest.approx(4 * base.storage_read_s(5000))
    with pytest.raises(ValueError):
        base.slowed(0)
