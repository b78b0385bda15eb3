"""What the scheduler answers: a decision (with the candidates it weighed), a hold or a shed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, NewType

from gateway.scheduler.request import RequestId

EngineId = NewType("EngineId", str)

READ_PATHS = ("pe", "de", "split")


def read_path_of(pe_share: float) -> str:
    """`pe` when the prefill reads everything, `de` when the decode does, else `split`."""
    return "pe" if pe_share >= 1.0 else "de" if pe_share <= 0.0 else "split"


class Candidate(NamedTuple):
    """One (prefill, decode, read plan) the policy weighed, with what it predicted.

    Named tuples, not dataclasses, for these two: a decision is made per request in tens of
    microseconds, and building a frozen dataclass costs several of them."""

    prefill: EngineId
    decode: EngineId
    pe_share: float
    """Fraction of the hit blocks the prefill engine reads itself; the decode reads the rest."""
    ttft_s: float
    """Predicted time to first token, from now."""
    tpot_s: float
    note: str = ""

    @property
    def read_path(self) -> str:
        return read_path_of(self.pe_share)


class Decision(NamedTuple):
    rid: RequestId
    prefill: EngineId
    decode: EngineId
    pe_share: float
    """The prefill reads `pe_share` of the hit blocks, the decode `de_share`; they sum to 1."""
    predicted_ttft_s: float
    """From `at`; the correction factors included."""
    predicted_tpot_s: float
    policy: str
    reason: str
    at: float
    """`now` when it was decided."""
    waited_s: float
    """How long the request was held before this decision."""
    candidates: tuple[Candidate, ...] = ()

    @property
    def read_path(self) -> str:
        return read_path_of(self.pe_share)

    @property
    def de_share(self) -> float:
        return 1.0 - self.pe_share


@dataclass(frozen=True, slots=True)
class Hold:
    """No placement now; the request waits in the gateway."""

    reason: str
    until: float | None = None
    """When a placement may become possible as queues drain (None: only a new event tells)."""


@dataclass(frozen=True, slots=True)
class Shed:
    """Rejected: the client should retry after `retry_after_s` (429)."""

    rid: RequestId
    retry_after_s: float
    reason: str
