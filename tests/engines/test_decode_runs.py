"""`DecodeBatch.next_run`/`advance` (the simulator's stepping) agree with step-by-step decoding."""

from __future__ import annotations

import pytest

from engines.engine_core import DecodeBatch, DecodeSeq
from engines.engine_model import EngineModel

MODEL = EngineModel.named("ds-v3.2-660b")


def _batch() -> DecodeBatch:
    batch = DecodeBatch(MODEL)
    for rid, context, tokens in (("a", 30_000, 5), ("b", 10_000, 8), ("c", 50_000, 12)):
        batch.add(DecodeSeq(rid, context, tokens))
    return batch


def test_a_run_ends_when_the_first_sequence_finishes_and_matches_single_steps() -> None:
    stepped, run_batch = _batch(), _batch()
    per_step = 0.0
    for _ in range(5):
        step = stepped.next_step()
        assert step is not None
        per_step += step.duration_s
        stepped.finish_step(step)
    run = run_batch.next_run()
    assert run is not None and run.steps == 5 and set(run.rids) == {"a", "b", "c"}
    assert run.duration_s == pytest.approx(per_step, rel=0.01)
    started, finished = run_batch.advance(run, run.steps)
    assert sorted(started) == ["a", "b", "c"] and finished == ["a"]
    assert {r: s.generated for r, s in run_batch.running.items()} == {
        r: s.generated for r, s in stepped.running.items()
    }


def test_a_cut_run_applies_only_the_steps_taken() -> None:
    batch = _batch()
    run = batch.next_run()
    assert run is not None
    started, finished = batch.advance(run, 2)
    assert len(started) == 3 and finished == []
    assert all(s.generated == 2 for s in batch.running.values())
    assert batch.advance(run, 0) == ([], [])
    nxt = batch.next_run()
    assert nxt is not None and nxt.steps == 3  # "a" has 3 of its 5 tokens left
