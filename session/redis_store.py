"""The Redis session store, shared by gateway replicas.

Every hot-path call is one round trip: `resolve` and `commit` are Lua scripts (EVALSHA), so a
turn costs two. A commit merges on the server, atomically, with counters incremented there: two
gateways committing turns of one session concurrently both count. Records compare equal, field
by field, with what `MemorySessionStore` (`apply_commit`) would hold after the same commits.

Key layout (`{p}` the key prefix; tenants, session ids and digests are hex-encoded, so any
printable tenant or id, ':' and spaces included, maps to exactly one key):

    {p}s:{tenant}:{id}      hash: m (orjson meta), tip, cp, tk (tip key), turns, chars, htok,
                            created, parent ('=' + id), pf, dc
    {p}f:{tenant}:{id}      list of orjson facts, oldest first, trimmed to max_turn_facts
    {p}t:{tenant}:{tip}     string: the id (hex) of the session whose tip this is
    {p}r:{tenant}:{root}    zset: ids (hex) scored by turn time, trimmed to max_related

Every key carries the idle TTL, refreshed by commits and by resolves/gets of its session.
Not cluster-safe: the scripts touch keys they discover (tip index → session).

Failures: timeouts are never retried (a hung Redis costs one `timeout_s`, then the caller
degrades). A broken connection (Redis restarted, an idle connection closed by the server or a
proxy) is retried once on a fresh one, or every pooled connection would fail one call after a
restart. The price: a connection that breaks after Redis ran a commit but before its reply
arrived applies that turn twice (turns + 2); that needs a crash in that instant.
"""

from __future__ import annotations

import struct
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import orjson
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from session.errors import SessionStoreError
from session.record import (
    ChainTip,
    Resolution,
    SessionRecord,
    TurnCommit,
    TurnFacts,
    thin_checkpoints,
)
from session.store import SessionPage, StoreLimits

__all__ = ["RedisSessionStore"]

_T = TypeVar("_T")
_TIP = struct.Struct("<QQQHHI")
_SCAN_COUNT = 100
"""SCAN's COUNT hint; fixed, so that re-scanning one cursor yields the same batch."""
_SCAN_CALLS_PER_PAGE = 64
"""Bound on SCAN calls for one page (a tenant with few keys in a big keyspace)."""

_LOAD_LUA = """
local function load(p, th, idhex, ttl)
  local sk = p .. 's:' .. th .. ':' .. idhex
  local h = redis.call('HGETALL', sk)
  if #h == 0 then return nil end
  local fk = p .. 'f:' .. th .. ':' .. idhex
  redis.call('PEXPIRE', sk, ttl)
  redis.call('PEXPIRE', fk, ttl)
  local tk = redis.call('HGET', sk, 'tk')
  if tk and redis.call('GET', tk) == idhex then redis.call('PEXPIRE', tk, ttl) end
  return {idhex, h, redis.call('LRANGE', fk, 0, -1)}
end
"""

_RESOLVE_LUA = (
    _LOAD_LUA
    + """
local p, th, ttl, maxrel = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local sid, root = ARGV[5], ARGV[6]
if sid ~= '' then
  local r = load(p, th, string.sub(sid, 2), ttl)
  if r then return {1, 0, r} end
else
  for i = 7, #ARGV do
    local idhex = redis.call('GET', p .. 't:' .. th .. ':' .. ARGV[i])
    if idhex then
      local r = load(p, th, idhex, ttl)
      if r then return {2, i - 7, r} end
    end
  end
end
local out = {0, 0}
if root ~= '' then
  local rk = p .. 'r:' .. th .. ':' .. root
  for _, idhex in ipairs(redis.call('ZREVRANGE', rk, 0, -1)) do
    local r = nil
    if #out - 2 < maxrel then r = load(p, th, idhex, ttl)
    elseif redis.call('EXISTS', p .. 's:' .. th .. ':' .. idhex) == 1 then r = true end
    if not r then redis.call('ZREM', rk, idhex)
    elseif r ~= true then out[#out + 1] = r end
  end
end
return out
"""
)

_COMMIT_LUA = """
local sk, fk, tk, rk = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local id, ttl, maxf, maxrel = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local function unindex(key)
  if key and redis.call('GET', key) == id then redis.call('DEL', key) end
end
unindex(redis.call('HGET', sk, 'tk'))
if ARGV[5] ~= '' then unindex(ARGV[5]) end
if redis.call('HSETNX', sk, 'created', ARGV[15]) == 1 then
  redis.call('DEL', fk)
  redis.call('HSET', sk, 'turns', ARGV[17], 'chars', ARGV[18], 'htok', ARGV[19])
  if ARGV[16] ~= '' then redis.call('HSET', sk, 'parent', ARGV[16]) end
  if ARGV[20] ~= '' then redis.call('HSET', sk, 'pf', ARGV[20]) end
  if ARGV[21] ~= '' then redis.call('HSET', sk, 'dc', ARGV[21]) end
  for i = 22, #ARGV do redis.call('RPUSH', fk, ARGV[i]) end
end
redis.call('HSET', sk, 'm', ARGV[6], 'tip', ARGV[7], 'cp', ARGV[8], 'tk', tk)
redis.call('HINCRBY', sk, 'turns', 1)
redis.call('HINCRBY', sk, 'chars', ARGV[9])
redis.call('HINCRBY', sk, 'htok', ARGV[10])
if ARGV[11] ~= '' then redis.call('HSET', sk, 'pf', ARGV[11]) end
if ARGV[12] ~= '' then redis.call('HSET', sk, 'dc', ARGV[12]) end
redis.call('RPUSH', fk, ARGV[13])
redis.call('LTRIM', fk, -maxf, -1)
redis.call('SET', tk, id, 'PX', ttl)
redis.call('ZADD', rk, ARGV[14], id)
redis.call('ZREMRANGEBYRANK', rk, 0, -(maxrel + 1))
redis.call('PEXPIRE', sk, ttl)
redis.call('PEXPIRE', fk, ttl)
redis.call('PEXPIRE', rk, ttl)
return 1
"""

_DELETE_LUA = """
local tk = redis.call('HGET', KEYS[1], 'tk')
if tk and redis.call('GET', tk) == ARGV[1] then redis.call('DEL', tk) end
local n = redis.call('DEL', KEYS[1])
redis.call('DEL', KEYS[2])
return n
"""


def redis_client(url: str, timeout_s: float, max_connections: int) -> aioredis.Redis:
    """A client whose every wait is bounded by `timeout_s`. Its pool blocks: a burst beyond
    `max_connections` waits for a connection instead of failing, which would mark the store
    down for nothing; a connection broken by a Redis restart is retried once on a fresh one."""
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=timeout_s,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry_on_timeout=False,
        retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
    )
    return aioredis.Redis.from_pool(pool)


def _hex(text: str) -> str:
    return text.encode().hex()


def _unhex(raw: bytes | str) -> str:
    return bytes.fromhex(raw.decode() if isinstance(raw, bytes) else raw).decode()


def _is_hex(text: str) -> bool:
    return len(text) % 2 == 0 and all(c in "0123456789abcdef" for c in text)


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def _pack_tip(tip: ChainTip) -> bytes:
    head = _TIP.pack(
        tip.messages,
        tip.messages_bytes,
        tip.tokens,
        len(tip.digest),
        len(tip.block_hash),
        len(tip.pending),
    )
    return head + tip.digest + tip.block_hash + tip.pending


def _unpack_tip(raw: bytes) -> ChainTip:
    messages, messages_bytes, tokens, n_digest, n_block, n_pending = _TIP.unpack_from(raw)
    at = _TIP.size
    digest, at = raw[at : at + n_digest], at + n_digest
    block_hash, at = raw[at : at + n_block], at + n_block
    return ChainTip(messages, messages_bytes, digest, tokens, block_hash, raw[at : at + n_pending])


def _pack_facts(facts: TurnFacts) -> bytes:
    return orjson.dumps(
        [
            facts.hit_tokens,
            facts.append_tokens,
            facts.output_tokens,
            facts.ttft_s,
            facts.tpot_s,
            facts.at,
        ]
    )


def _creation_args(turn: TurnCommit, seed: SessionRecord | None) -> list[str | bytes | int]:
    """The commit script's ARGV[15:]: what a record starts from when Redis holds none: nothing
    (created now, with the turn's parent), or `seed`'s history when it is this session's."""
    if seed is None or (seed.tenant, seed.id) != (turn.tenant, turn.session_id):
        parent = "=" + turn.parent if turn.parent is not None else ""
        return [repr(float(turn.facts.at)), parent, 0, 0, 0, "", ""]
    return [
        repr(float(seed.created)),
        "=" + seed.parent if seed.parent is not None else "",
        seed.turns,
        seed.chars,
        seed.hashed_tokens,
        seed.last_prefill or "",
        seed.last_decode or "",
        *(_pack_facts(facts) for facts in seed.recent),
    ]


def _text(raw: bytes | None) -> str | None:
    return raw.decode() if raw else None


def _decode(tenant: str, reply: Sequence[Any]) -> SessionRecord:
    """A record from the scripts' `{idhex, HGETALL, LRANGE facts}` triple."""
    idhex, flat, facts = reply
    try:
        h = dict(zip(flat[::2], flat[1::2], strict=True))
        meta = orjson.loads(h[b"m"])
        parent = h.get(b"parent")
        return SessionRecord(
            id=_unhex(idhex),
            tenant=tenant,
            model=meta["model"],
            created=float(h[b"created"]),
            last_seen=meta["seen"],
            turns=int(h[b"turns"]),
            prompt_tokens=meta["pt"],
            output_tokens=meta["ot"],
            chars=int(h[b"chars"]),
            hashed_tokens=int(h[b"htok"]),
            last_prefill=_text(h.get(b"pf")),
            last_decode=_text(h.get(b"dc")),
            parent=parent.decode()[1:] if parent else None,
            tip=_unpack_tip(h[b"tip"]),
            checkpoints=bytes(h[b"cp"]),
            recent=tuple(TurnFacts(*orjson.loads(f)) for f in facts),
        )
    except (KeyError, ValueError, TypeError, struct.error, orjson.JSONDecodeError) as exc:
        raise SessionStoreError(f"unreadable session record in redis: {exc!r}") from exc


class RedisSessionStore:
    """`SessionStore` on Redis; every Redis failure surfaces as `SessionStoreError`."""

    name = "redis"

    def __init__(
        self,
        url: str,
        limits: StoreLimits | None = None,
        *,
        timeout_s: float = 0.5,
        key_prefix: str = "dp:",
        max_connections: int = 64,
    ) -> None:
        self.limits = limits or StoreLimits()
        self.round_trips = 0
        """Commands, scripts and pipelines sent (a NOSCRIPT reload counts with its call)."""
        self._prefix = key_prefix
        self._ttl_ms = max(1, round(self.limits.idle_ttl_s * 1000))
        self._client = redis_client(url, timeout_s, max_connections)
        self._resolve = self._client.register_script(_RESOLVE_LUA)
        self._commit = self._client.register_script(_COMMIT_LUA)
        self._delete = self._client.register_script(_DELETE_LUA)

    async def _call(self, op: Callable[[], Awaitable[_T]]) -> _T:
        """The one boundary where a round trip is counted and Redis errors are translated."""
        self.round_trips += 1
        try:
            return await op()
        except (RedisError, OSError) as exc:
            raise SessionStoreError(f"redis session store: {type(exc).__name__}: {exc}") from exc

    def _key(self, kind: str, tenant: str, name: str) -> str:
        return f"{self._prefix}{kind}:{_hex(tenant)}:{name}"

    async def resolve(
        self,
        tenant: str,
        session_id: str | None,
        tip_digests: Sequence[bytes],
        root: bytes | None,
    ) -> Resolution:
        args = [
            self._prefix,
            _hex(tenant),
            self._ttl_ms,
            self.limits.max_related,
            "=" + _hex(session_id) if session_id is not None else "",
            root.hex() if root is not None else "",
            *(digest.hex() for digest in tip_digests),
        ]
        reply = await self._call(lambda: self._resolve(args=args))
        kind, index, *records = reply
        decoded = [_decode(tenant, r) for r in records]
        if kind == 1:
            return Resolution(record=decoded[0])
        if kind == 2:
            return Resolution(record=decoded[0], tip_index=int(index))
        return Resolution(related=tuple(decoded))

    async def commit(self, turn: TurnCommit, *, seed: SessionRecord | None = None) -> None:
        """Apply `turn`; `seed` (a record kept elsewhere, e.g. by a fallback store during an
        outage) stands in for the stored record when Redis has none, so its history carries
        over: the result is `apply_commit(seed, turn)` then."""
        t, idhex = turn.tenant, _hex(turn.session_id)
        keys = [
            self._key("s", t, idhex),
            self._key("f", t, idhex),
            self._key("t", t, turn.tip.digest.hex()),
            self._key("r", t, turn.root.hex()),
        ]
        meta = {
            "model": turn.model,
            "seen": turn.facts.at,
            "pt": turn.prompt_tokens,
            "ot": turn.output_tokens,
        }
        args: list[str | bytes | int] = [
            idhex,
            self._ttl_ms,
            self.limits.max_turn_facts,
            self.limits.max_related,
            self._key("t", t, turn.replaced_tip.hex()) if turn.replaced_tip else "",
            orjson.dumps(meta),
            _pack_tip(turn.tip),
            thin_checkpoints(turn.checkpoints, self.limits.max_checkpoints),
            turn.chars,
            turn.hashed_tokens,
            turn.prefill or "",
            turn.decode or "",
            _pack_facts(turn.facts),
            repr(float(turn.facts.at)),
            *_creation_args(turn, seed),
        ]
        await self._call(lambda: self._commit(keys=keys, args=args))

    async def get(self, tenant: str, session_id: str) -> SessionRecord | None:
        return (await self.resolve(tenant, session_id, (), None)).record

    async def delete(self, tenant: str, session_id: str) -> bool:
        idhex = _hex(session_id)
        keys = [self._key("s", tenant, idhex), self._key("f", tenant, idhex)]
        return bool(await self._call(lambda: self._delete(keys=keys, args=[idhex])))

    async def list(self, tenant: str, cursor: str | None, limit: int) -> SessionPage:
        """A page of at most `limit` sessions by SCAN. The cursor is `<scan cursor>` or
        `<scan cursor>:<last id>` when a page ended inside a SCAN batch: that batch is scanned
        again and resumed after the last id returned (batches are sorted by id)."""
        if limit < 1:
            raise ValueError("limit must be at least 1")
        scan_at, after = _parse_cursor(cursor)
        match = _glob_escape(self._key("s", tenant, "")) + "*"
        start = len(self._key("s", tenant, ""))
        ids: list[str] = []
        next_cursor: str | None = None
        for _ in range(_SCAN_CALLS_PER_PAGE):
            batch_at = scan_at
            scan_at, keys = await self._call(
                lambda c=batch_at: self._client.scan(c, match=match, count=_SCAN_COUNT)
            )
            found = {k.decode()[start:] for k in keys}
            batch = sorted(i for i in found - set(ids) if _is_hex(i))
            batch = [i for i in batch if i > after] if after is not None else batch
            after = None
            room = limit - len(ids)
            if len(batch) > room:
                ids += batch[:room]
                next_cursor = f"{batch_at}:{ids[-1]}"
                break
            ids += batch
            next_cursor = str(scan_at) if scan_at else None
            if next_cursor is None or len(ids) == limit:
                break
        return SessionPage(await self._fetch(tenant, ids), next_cursor)

    async def _fetch(self, tenant: str, ids: Sequence[str]) -> tuple[SessionRecord, ...]:
        """The records of `ids` in one pipeline (no TTL refresh); vanished ones are skipped."""
        if not ids:
            return ()
        pipe = self._client.pipeline(transaction=False)
        for idhex in ids:
            pipe.hgetall(self._key("s", tenant, idhex))
            pipe.lrange(self._key("f", tenant, idhex), 0, -1)
        replies = await self._call(pipe.execute)
        out = []
        for idhex, h, facts in zip(ids, replies[::2], replies[1::2], strict=True):
            if h:
                flat = [x for pair in h.items() for x in pair]
                out.append(_decode(tenant, [idhex, flat, facts]))
        return tuple(out)

    async def close(self) -> None:
        await self._client.aclose()


def _parse_cursor(cursor: str | None) -> tuple[int, str | None]:
    """(scan cursor, last id returned from that batch if any); an unreadable cursor starts
    over."""
    head, sep, after = (cursor or "0").partition(":")
    if not head.isdigit() or not _is_hex(after):
        return 0, None
    return int(head), after if sep else None
