"""Rate-limit buckets shared by gateway replicas: GCRA (see `gateway.rate_limits.gcra`) as one
atomic Lua script on Redis, on Redis's own clock so replicas' clocks need not agree.

Key layout: `{prefix}{bucket}` holds the bucket's theoretical arrival time in milliseconds of
Redis's clock, expiring when the bucket would be full again (a full bucket needs no key).

Every call is bounded by `timeout_s`; any Redis failure or timeout is raised as
`LimiterUnavailable` for `FailoverLimiter` to absorb.
"""

from __future__ import annotations

import asyncio

from redis.exceptions import RedisError

from gateway.errors import LimiterUnavailable
from gateway.rate_limits import WINDOW_S
from session.redis_store import redis_client

__all__ = ["RedisLimiter"]

# KEYS[1] bucket; ARGV cost, per_min, window (ms). Returns 0 (admitted) or the wait in ms.
# Reading TIME before writing is allowed: scripts replicate their effects (Redis >= 5).
_GCRA_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local cost = tonumber(ARGV[1])
local per_min = tonumber(ARGV[2])
local window = tonumber(ARGV[3])
local interval = window / per_min
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local wait = tat - now - (window - math.min(cost, per_min) * interval)
if wait > 0.000001 then
  return tostring(wait)
end
local new_tat = tat + cost * interval
redis.call('SET', KEYS[1], tostring(new_tat), 'PX', math.ceil(new_tat - now) + 1000)
return 0
"""


class RedisLimiter:
    name = "redis"

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = 0.05,
        key_prefix: str = "dp:rl:",
        max_connections: int = 64,
    ) -> None:
        self.timeout_s = timeout_s
        self._prefix = key_prefix
        self._client = redis_client(url, timeout_s, max_connections)  # as the session store's
        self._gcra = self._client.register_script(_GCRA_LUA)

    async def acquire(self, bucket: str, cost: int, per_min: int) -> float:
        args = (cost, per_min, int(WINDOW_S * 1000))
        try:
            async with asyncio.timeout(self.timeout_s * 2):  # connect + call, at worst
                reply = await self._gcra(keys=[self._prefix + bucket], args=args)
        except (RedisError, OSError, TimeoutError) as exc:
            raise LimiterUnavailable(f"redis: {type(exc).__name__}: {exc}") from exc
        return float(reply) / 1000.0

    async def close(self) -> None:
        await self._client.aclose()
