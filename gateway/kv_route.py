"""The `dualpath` extension field: which blocks a request's cached KV is, and who loads it.

Workers that advertise `dualpath_kv` in /server_info (ours do) get the chain root of the request's
block keys (salted per tenant and model, as the session tracker salts them), the read path and,
for read path `de`, the decode worker to pull the staged blocks from. A stock SGLang worker gets
nothing: its body is the client's, untouched.

Until the scheduler picks a read path per request, the gateway's configured default is used.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engines.worker_registry import Worker
from gateway.placement import PDPair

READ_PATHS = ("pe", "de")


def speaks_kv(worker: Worker) -> bool:
    return isinstance(worker.info.get("dualpath_kv"), dict)


@dataclass(frozen=True, slots=True)
class KVRoute:
    root: bytes
    read_path: str = "pe"
    expected_hit_tokens: int | None = None

    def extension(self, pair: PDPair) -> dict[str, Any] | None:
        """The field both legs carry, or None when either worker would not understand it."""
        if not (speaks_kv(pair.prefill) and speaks_kv(pair.decode)):
            return None
        ext: dict[str, Any] = {"kv_root": self.root.hex(), "read_path": self.read_path}
        if self.read_path == "de":
            ext["stager"] = pair.decode.url
        if self.expected_hit_tokens is not None:
            ext["expected_hit_tokens"] = self.expected_hit_tokens
        return ext
