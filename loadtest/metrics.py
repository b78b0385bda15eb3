"""Per-request samples and their summary: the one definition of TTFT, TTST, TPOT, E2E, JCT and
goodput that the replay client, the simulator and the reports share.

- TTFT: request sent → first token; TTST: → second token (the PD handoff and the decode's first
  step); TPOT: (last token − first token) / (output tokens − 1); E2E: sent → last token.
- JCT: first agent start → last turn's end (offline runs).
- Goodput: requests per second that met the SLO (TTFT and TPOT both within target).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class SLO:
    ttft_s: float = 4.0
    tpot_s: float = 0.05

    @classmethod
    def parse(cls, text: str) -> SLO:
        """`ttft=4,tpot=0.05` (seconds); either may be left out."""
        values: dict[str, float] = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            name, sep, raw = part.partition("=")
            if not sep or name.strip() not in ("ttft", "tpot"):
                raise ValueError(f"SLO parts are ttft=SECONDS and tpot=SECONDS, not {part!r}")
            value = float(raw)
            if not value > 0 or math.isinf(value):
                raise ValueError(f"SLO {name.strip()} must be a positive number, not {raw!r}")
            values[name.strip() + "_s"] = value
        return cls(**values)


@dataclass(frozen=True, slots=True)
class RequestSample:
    agent: str
    turn: int
    sent_at: float
    first_token_at: float | None
    end_at: float | None
    output_tokens: int
    prompt_tokens: int
    cached_tokens: int = 0
    second_token_at: float | None = None
    read_path: str | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.end_at is not None

    @property
    def ttft_s(self) -> float | None:
        return None if self.first_token_at is None else self.first_token_at - self.sent_at

    @property
    def ttst_s(self) -> float | None:
        return None if self.second_token_at is None else self.second_token_at - self.sent_at

    @property
    def tpot_s(self) -> float | None:
        if self.first_token_at is None or self.end_at is None or self.output_tokens < 2:
            return None
        return (self.end_at - self.first_token_at) / (self.output_tokens - 1)

    @property
    def e2e_s(self) -> float | None:
        return None if self.end_at is None else self.end_at - self.sent_at

    def meets(self, slo: SLO) -> bool:
        ttft, tpot = self.ttft_s, self.tpot_s
        return (
            self.ok
            and ttft is not None
            and ttft <= slo.ttft_s
            and (tpot is None or tpot <= slo.tpot_s)
        )


def percentile(values: Sequence[float], q: float) -> float | None:
    """The `q`-quantile (0..1) by linear interpolation; None for no values. Infinite values
    (a request that never answered) are allowed."""
    if not values:
        return None
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    a, b = ordered[low], ordered[high]
    return a if a == b or pos == low else a + (b - a) * (pos - low)


def _dist(values: Iterable[float | None]) -> dict[str, float | None]:
    xs = [v for v in values if v is not None]
    return {
        "mean": sum(xs) / len(xs) if xs else None,
        "p50": percentile(xs, 0.50),
        "p90": percentile(xs, 0.90),
        "p99": percentile(xs, 0.99),
        "max": max(xs) if xs else None,
    }


def summarize(samples: Sequence[RequestSample], slo: SLO) -> dict[str, Any]:
    """The figures of a run, JSON-ready."""
    done = [s for s in samples if s.ok]
    starts = [s.sent_at for s in samples]
    ends = [s.end_at for s in done if s.end_at is not None]
    span = (max(ends) - min(starts)) if ends and starts else 0.0
    met = sum(1 for s in done if s.meets(slo))
    prompt = sum(s.prompt_tokens for s in done)
    paths = Counter(s.read_path for s in done if s.read_path)
    total_paths = sum(paths.values())
    return {
        "requests": len(samples),
        "completed": len(done),
        "errors": len(samples) - len(done),
        "jct_s": span,
        "ttft_s": _dist(s.ttft_s for s in done),
        "ttst_s": _dist(s.ttst_s for s in done),
        "tpot_s": _dist(s.tpot_s for s in done),
        "e2e_s": _dist(s.e2e_s for s in done),
        "slo": {"ttft_s": slo.ttft_s, "tpot_s": slo.tpot_s},
        "slo_met": met,
        "goodput_rps": met / span if span > 0 else 0.0,
        "throughput_rps": len(done) / span if span > 0 else 0.0,
        "output_tokens_per_s": sum(s.output_tokens for s in done) / span if span > 0 else 0.0,
        "cached_ratio": sum(s.cached_tokens for s in done) / prompt if prompt else 0.0,
        "read_path_share": {p: n / total_paths for p, n in sorted(paths.items())},
    }
