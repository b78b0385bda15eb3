"""Best-effort looks at our own gateway during a replay: storage-NIC counters and read paths.

Only a dualpath gateway answers these; against any other endpoint `discover` finds nothing and
the run goes on without them. Every call has the control timeout, and a failed call is skipped.

- Nodes: `GET {url}/ready` lists the workers; each worker's `GET /server_info` says whether it
  models a node (`dualpath_kv`: its storage NIC's bandwidth) and its time scale.
- Storage NIC: every `interval_s`, each node's `GET /v1/loads` → `dualpath.snic_moved_bytes`
  (cumulative modelled bytes). At most `max_points` per node: past that, every other point is
  dropped and the interval doubles, so a long run keeps its whole span at a coarser grain.
- Read paths: `GET {url}/debug/decisions?limit=1000` at the end, counting the decisions' paths
  (the gateway does not say per response which path a request took).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson

from loadtest.report.series import SnicSeries

DECISIONS_LIMIT = 1000
MAX_POINTS = 4096


@dataclass(slots=True)
class _Node:
    name: str
    url: str
    capacity: float | None
    time_scale: float
    t: list[float] = field(default_factory=list)
    moved: list[float] = field(default_factory=list)


class ServerProbe:
    def __init__(
        self,
        client: httpx.AsyncClient,
        base_url: str,
        clock: Callable[[], float],
        interval_s: float = 0.5,
        max_points: int = MAX_POINTS,
        headers: dict[str, str] | None = None,
    ) -> None:
        """`headers` (the API key) go to the gateway's own URLs only, never to its workers."""
        self._client = client
        self._base = base_url
        self._clock = clock
        self.interval_s = interval_s
        self._max_points = max_points
        self._nodes: list[_Node] = []
        self._headers = headers

    async def _json(self, url: str, headers: dict[str, str] | None = None) -> Any:
        """The body as JSON, or None on any failure (this is a best-effort probe)."""
        try:
            response = await self._client.get(url, headers=headers)
            return orjson.loads(response.content)
        except (httpx.HTTPError, orjson.JSONDecodeError):
            return None

    async def discover(self) -> int:
        """Find the gateway's modelled nodes; how many."""
        ready = await self._json(self._base + "/ready", self._headers)
        workers = ready.get("workers") if isinstance(ready, dict) else None
        if not isinstance(workers, list):
            return 0
        counts: Counter[str] = Counter()
        for worker in workers[:256]:
            if not isinstance(worker, dict) or not isinstance(worker.get("url"), str):
                continue
            role = str(worker.get("role", "w"))
            info = await self._json(worker["url"].rstrip("/") + "/server_info")
            kv = info.get("dualpath_kv") if isinstance(info, dict) else None
            if not isinstance(kv, dict):
                continue
            name = f"{role[:1]}{counts[role]}"
            counts[role] += 1
            capacity = kv.get("snic_bytes_per_s")
            scale = info.get("dualpath_time_scale", 1.0)
            self._nodes.append(
                _Node(
                    name,
                    worker["url"].rstrip("/"),
                    float(capacity) if isinstance(capacity, int | float) else None,
                    float(scale) if isinstance(scale, int | float) else 1.0,
                )
            )
        return len(self._nodes)

    async def _sample(self, node: _Node) -> bool:
        """One reading of `node`; True when its points were thinned to stay bounded."""
        body = await self._json(node.url + "/v1/loads")
        try:
            moved = body["loads"][0]["dualpath"]["snic_moved_bytes"]
        except (TypeError, KeyError, IndexError):
            return False
        if not isinstance(moved, int | float) or isinstance(moved, bool):
            return False
        node.t.append(self._clock())
        node.moved.append(float(moved))
        if len(node.t) <= self._max_points:
            return False
        del node.t[1::2], node.moved[1::2]
        return True

    async def sample_all(self) -> None:
        thinned = await asyncio.gather(*(self._sample(n) for n in self._nodes))
        if any(thinned):
            self.interval_s *= 2

    async def poll(self) -> None:
        """Sample every node every interval until cancelled."""
        while True:
            await self.sample_all()
            await asyncio.sleep(self.interval_s)

    async def read_paths(self) -> dict[str, int]:
        url = f"{self._base}/debug/decisions?limit={DECISIONS_LIMIT}"
        body = await self._json(url, self._headers)
        models = body.get("models") if isinstance(body, dict) else None
        counts: Counter[str] = Counter()
        if isinstance(models, dict):
            for view in models.values():
                for d in view.get("decisions", []) if isinstance(view, dict) else []:
                    if isinstance(d, dict) and isinstance(d.get("read_path"), str):
                        counts[d["read_path"]] += 1
        return dict(sorted(counts.items()))

    def series(self) -> tuple[SnicSeries, ...]:
        return tuple(
            SnicSeries(n.name, tuple(n.t), tuple(n.moved), n.capacity, n.time_scale)
            for n in self._nodes
        )
