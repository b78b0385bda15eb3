"""The shared definitions of the run figures."""

from __future__ import annotations

import pytest

from loadtest.metrics import SLO, RequestSample, percentile, summarize


def _sample(
    sent: float, first: float | None, end: float | None, out: int, **kw: object
) -> RequestSample:
    return RequestSample("a", 0, sent, first, end, out, 1000, **kw)  # type: ignore[arg-type]


def test_slo_parses_and_rejects_nonsense() -> None:
    assert SLO.parse("ttft=4,tpot=0.05") == SLO(4.0, 0.05)
    assert SLO.parse("tpot=0.1") == SLO(4.0, 0.1)
    for bad in ("ttft", "itl=1", "ttft=0", "ttft=-1", "tpot=nan", "ttft=inf"):
        with pytest.raises(ValueError):
            SLO.parse(bad)


def test_per_request_times() -> None:
    s = _sample(1.0, 1.5, 3.5, 5, second_token_at=1.7)
    assert (s.ttft_s, s.ttst_s, s.tpot_s, s.e2e_s) == (0.5, 0.7, 0.5, 2.5)
    assert s.meets(SLO(1.0, 0.6)) and not s.meets(SLO(0.4, 0.6)) and not s.meets(SLO(1.0, 0.4))
    assert _sample(0, 0.1, 0.1, 1).tpot_s is None  # one token: no TPOT
    assert not _sample(0, 0.1, None, 5, error="reset").meets(SLO())


def test_percentile_interpolates() -> None:
    assert percentile([], 0.5) is None
    assert percentile([3.0, 1.0, 2.0], 0.5) == 2.0
    assert percentile([0.0, 10.0], 0.99) == pytest.approx(9.9)
    inf = float("inf")  # a request that never answered
    assert percentile([1.0, inf, inf], 0.9) == inf and percentile([1.0, 2.0, inf], 0.5) == 2.0


def test_summary_counts_goodput_errors_and_paths() -> None:
    samples = [
        _sample(0.0, 1.0, 1.4, 11, read_path="pe", cached_tokens=900),  # TPOT 0.04 s
        _sample(0.0, 5.0, 6.0, 11, read_path="de", cached_tokens=900),  # TTFT over 4 s
        _sample(1.0, None, None, 0, error="502"),
    ]
    out = summarize(samples, SLO())
    assert (out["requests"], out["completed"], out["errors"], out["slo_met"]) == (3, 2, 1, 1)
    assert out["jct_s"] == 6.0 and out["goodput_rps"] == pytest.approx(1 / 6)
    assert out["read_path_share"] == {"de": 0.5, "pe": 0.5}
    assert out["cached_ratio"] == pytest.approx(0.9)
    assert out["ttft_s"]["p50"] == pytest.approx(3.0)
