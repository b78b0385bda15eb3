"""The `dualpath` extension field: which blocks a request's cached KV is, and who loads it.

Workers that advertise `dualpath_kv` in /server_info (ours do) get the chain root of the request's
block keys (salted per tenant and model, as the session tracker salts them), the read path the
scheduler chose and, for paths `de` and `split`, the decode worker that stages the blocks (and
for `split` the prefill's share). A stock SGLang worker gets nothing: its body is the client's,
untouched, and it loads its KV on the prefill side as it always does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engines.worker_registry import Worker
from gateway.engine_costs import read_paths_of
from gateway.placement import PDPair


def speaks_kv(worker: Worker) -> bool:
    return isinstance(worker.info.get("dualpath_kv"), dict)


@dataclass(frozen=True, slots=True)
class KVRoute:
    root: bytes
    read_path: str = "pe"
    pe_share: float = 1.0
    """The prefill's share of the hit blocks (read path `split`)."""
    expected_hit_tokens: int | None = None

    def extension(self, pair: PDPair) -> dict[str, Any] | None:
        """The field both legs carry, or None when either worker would not understand it."""
        if not (speaks_kv(pair.prefill) and speaks_kv(pair.decode)):
            return None
        path = self.read_path
        if path not in read_paths_of(pair.prefill) & read_paths_of(pair.decode):
            path = "pe"  # the scheduler knew, but a worker may have restarted older
        ext: dict[str, Any] = {"kv_root": self.root.hex(), "read_path": path}
        if path != "pe":
            ext["stager"] = pair.decode.url
        if path == "split":
            ext["pe_share"] = round(self.pe_share, 6)
        if self.expected_hit_tokens is not None:
            ext["expected_hit_tokens"] = self.expected_hit_tokens
        return ext
