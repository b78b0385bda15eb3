"""What the scheduler needs to know about an engine's speed, as a Protocol.

`engines.engine_model.EngineModel` satisfies it; the scheduler never imports it (the arrow goes
the other way round in DESIGN.md), so the gateway and the simulator inject one per engine.
"""

from __future__ import annotations

from typing import Protocol


class CostModel(Protocol):
    @property
    def snic_bytes_per_s(self) -> float:
        """The engine's node storage NIC (reads from the KV store)."""
        ...

    @property
    def cnic_bytes_per_s(self) -> float:
        """The engine's node compute NIC (KV between nodes)."""
        ...

    def kv_bytes(self, tokens: float) -> float: ...

    def prefill_compute_s(self, append_tokens: int, cached_tokens: int) -> float:
        """One prefill forward of this request alone."""
        ...

    def prefill_marginal_s(self, append_tokens: int, cached_tokens: int) -> float:
        """What this request adds to a forward batched with others (no fixed cost)."""
        ...

    def decode_step_s(self, batch_size: int, context_tokens: int) -> float: ...
