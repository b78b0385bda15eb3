"""A request as the scheduler sees it: token counts, targets and who sent it, nothing else."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NewType

RequestId = NewType("RequestId", str)


@dataclass(frozen=True, slots=True)
class SchedRequest:
    rid: RequestId
    hit_tokens: int
    """Prompt tokens whose KV is in the store (loaded, not computed)."""
    append_tokens: int
    """Prompt tokens to compute (at least 1: an engine always computes the last token)."""
    output_tokens: int
    """Expected output tokens (the session's history, capped by the request's max_tokens)."""
    arrival: float
    """When the request reached the scheduler, on the caller's clock."""
    ttft_target_s: float
    tpot_target_s: float
    priority: int = 0
    """Higher runs earlier; each class is worth `SchedulerConfig.priority_step_s` of deadline."""
    session: str | None = None
    tenant: str = ""

    def __post_init__(self) -> None:
        if self.hit_tokens < 0 or self.append_tokens < 1 or self.output_tokens < 0:
            raise ValueError("need hit_tokens >= 0, append_tokens >= 1, output_tokens >= 0")
        if self.ttft_target_s <= 0 or self.tpot_target_s <= 0:
            raise ValueError("SLO targets must be positive")

    @property
    def prompt_tokens(self) -> int:
        return self.hit_tokens + self.append_tokens

    @property
    def deadline(self) -> float:
        """When the first token is due."""
        return self.arrival + self.ttft_target_s
