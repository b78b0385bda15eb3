"""`DecodeBatch.next_run`/`advance` (the simulator's stepping) agree with step-by-step decoding."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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
    assert (
        {r: run_batch.generated(r) for r in run_batch.running}
        == {r: stepped.generated(r) for r in stepped.running}
        == {"b": 5, "c": 5}
    )


def test_a_cut_run_applies_only_the_steps_taken() -> None:
    batch = _batch()
    run = batch.next_run()
    assert run is not None
    started, finished = batch.advance(run, 2)
    assert len(started) == 3 and finished == []
    assert all(batch.generated(rid) == 2 for rid in batch.running)
    assert batch.advance(run, 0) == ([], [])
    nxt = batch.next_run()
    assert nxt is not None and nxt.steps == 3  # "a" has 3 of its 5 tokens left


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("add"), st.integers(1, 5000), st.integers(0, 6)),
            st.tuples(st.just("step"), st.just(0), st.just(0)),
            st.tuples(st.just("run"), st.integers(0, 8), st.just(0)),
            st.tuples(st.just("abort"), st.integers(0, 30), st.just(0)),
        ),
        max_size=60,
    )
)
def test_counting_steps_once_matches_advancing_each_sequence(
    ops: list[tuple[str, int, int]],
) -> None:
    """Against a plain per-sequence count: tokens, first and last tokens, the KV in use, and
    each step's context (what its duration is priced on)."""
    batch = DecodeBatch(MODEL, max_total_tokens=12_000)
    seqs: dict[str, tuple[int, int]] = {}  # rid → (context, max new)
    made: dict[str, int] = {}  # rid → tokens seen so far (running sequences)
    for n, (op, a, b) in enumerate(ops):
        if op == "add":
            seqs[f"r{n}"] = (a, b)
            batch.add(DecodeSeq(f"r{n}", a, b))
        elif op == "abort":
            rid = f"r{a}"
            batch.abort(rid)
            made.pop(rid, None)
        elif op == "step":
            step = batch.next_step()
            if step is None:
                continue
            made.update({r: 0 for r in step.rids if r not in made})
            context = sum(seqs[r][0] + made[r] for r in step.rids)
            assert step.duration_s == MODEL.decode_step_s(len(step.rids), context)
            for e in batch.finish_step(step):
                assert e.index == made[e.rid]
                made[e.rid] += 1
                assert e.finished == (made[e.rid] >= seqs[e.rid][1])
                if e.finished:
                    del made[e.rid]
        else:
            run = batch.next_run()
            if run is None:
                continue
            made.update({r: 0 for r in run.rids if r not in made})
            assert run.steps == min(seqs[r][1] - made[r] for r in run.rids)
            taken = min(a, run.steps)
            started, finished = batch.advance(run, taken)
            assert started == [r for r in run.rids if taken and made[r] == 0]
            for r in run.rids:
                made[r] += taken
            assert finished == [r for r in run.rids if made[r] >= seqs[r][1]]
            for r in finished:
                del made[r]
        assert set(batch.running) == set(made)
        assert {r: batch.generated(r) for r in batch.running} == made
        expected = sum(seqs[r][0] + made[r] + seqs[r][1] for r in made)
        assert batch.used_tokens == expected
