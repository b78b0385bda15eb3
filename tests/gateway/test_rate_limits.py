"""Per-key rate limits: the GCRA arithmetic, the bounded in-process limiter, Redis-shared buckets
(two limiters, then two gateway processes, on one real redis-server) and the degrade to
per-process limits when Redis goes away."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import httpx
import pytest
import redis.asyncio as aioredis
import yaml
from fastapi.testclient import TestClient

from gateway.api_keys import hash_key
from gateway.app import create_app
from gateway.auth import reserved_tokens
from gateway.embedded_redis import RedisServer, redis_server
from gateway.rate_limits import FailoverLimiter, LocalLimiter, gcra
from gateway.redis_rate_limits import RedisLimiter
from gateway.scheduler.request import RequestId, SchedRequest
from gateway.settings import load_settings
from tests.support.procs import dualpath, free_port, running

MODEL = "tiny"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# --- arithmetic -----------------------------------------------------------------------------


def test_a_full_bucket_spends_a_minute_at_once_then_refills_at_the_rate() -> None:
    tat, now = 0.0, 100.0
    for _ in range(6):  # 6 per minute: all six at once
        tat, wait = gcra(tat, now, 1, 6)
        assert wait == 0.0
    assert gcra(tat, now, 1, 6) == (tat, pytest.approx(10.0))  # refused: tat unchanged
    assert gcra(tat, now + 9.9, 1, 6)[1] == pytest.approx(0.1)
    tat, wait = gcra(tat, now + 10.0, 1, 6)  # one interval later: one more
    assert wait == 0.0
    assert gcra(tat, now + 10.0, 1, 6)[1] == pytest.approx(10.0)


@pytest.mark.parametrize(
    ("spent", "cost", "wait"),
    [
        (0, 1000, 0.0),  # exactly the whole bucket
        (900, 100, 0.0),  # exactly what is left
        (900, 101, 0.06),  # one token short: one token's interval (0.06 s at 1000/min)
        (900, 300, 12.0),  # needs 300, holds 100: 200 tokens at 1000/min
    ],
)
def test_token_costs_wait_for_what_is_missing(spent: int, cost: int, wait: float) -> None:
    tat, _ = gcra(0.0, 0.0, spent, 1000) if spent else (0.0, 0.0)
    assert gcra(tat, 0.0, cost, 1000)[1] == pytest.approx(wait)


def test_a_request_larger_than_a_minute_waits_for_a_full_bucket_then_owes() -> None:
    tat, wait = gcra(0.0, 0.0, 1, 100)  # one token spent: the bucket is not full
    assert wait == 0.0
    assert gcra(tat, 0.0, 250, 100)[1] == pytest.approx(0.6)  # waits to be full again
    tat, wait = gcra(tat, 0.6, 250, 100)
    assert wait == 0.0 and tat == pytest.approx(0.6 + 150.0)  # 2.5 minutes of tokens, in debt
    assert gcra(tat, 60.0, 1, 100)[1] == pytest.approx(150.6 - 60.0 - 59.4)


def test_the_local_limiter_is_bounded_and_forgets_full_buckets() -> None:
    clock = Clock()
    limiter = LocalLimiter(max_buckets=3, clock=clock)
    for i in range(5):
        assert limiter.take(f"k{i}", 1, 1) == 0.0
    assert len(limiter) == 3  # k0 and k1 dropped (least recently used)
    assert limiter.take("k4", 1, 1) == pytest.approx(60.0)
    assert limiter.take("k0", 1, 1) == 0.0  # forgotten: starts over full
    clock.now += 61.0
    assert limiter.take("k4", 1, 1) == 0.0
    before = len(limiter)
    assert limiter.take("k9", 0, 5) == 0.0 and len(limiter) == before  # nothing owed: no entry


@pytest.mark.parametrize(
    ("body", "batch", "reserved"),
    [
        ({"max_tokens": 100}, 1, 1000 + 100),  # the prompt and all it may produce
        ({"max_completion_tokens": 50, "max_tokens": 100}, 1, 1000 + 50),  # as the schedule
        ({"max_tokens": 100, "n": 3}, 3, 1000 + 300),
        ({}, 1, 1000 + 70),  # no cap: the scheduler's expected output
        ({"max_tokens": True}, 1, 1000 + 70),  # not a count
    ],
)
def test_a_request_reserves_its_prompt_and_its_output_cap(
    body: dict[str, object], batch: int, reserved: int
) -> None:
    wanted = SchedRequest(RequestId("r"), 900, 100, 70, 0.0, 4.0, 0.05)
    assert reserved_tokens(body, batch, wanted) == reserved


# --- Redis --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    with redis_server() as server:
        yield server


async def test_two_limiters_on_one_redis_share_a_bucket(redis: RedisServer) -> None:
    a = RedisLimiter(redis.url, timeout_s=0.5, key_prefix="t1:")
    b = RedisLimiter(redis.url, timeout_s=0.5, key_prefix="t1:")
    try:
        waits = [await (a if i % 2 else b).acquire("r:k", 1, 4) for i in range(4)]
        assert waits == [0.0] * 4
        for limiter in (a, b):
            wait = await limiter.acquire("r:k", 1, 4)
            assert 14.0 < wait <= 15.0  # one interval of 15 s, less the time spent
        assert await a.acquire("r:other", 1, 4) == 0.0  # buckets are per key
        client = aioredis.Redis.from_url(redis.url)
        try:
            ttl_ms = await client.pttl("t1:r:k")
            assert 59_000 < ttl_ms <= 61_000  # gone once the bucket is full again
        finally:
            await client.aclose()
    finally:
        await a.close()
        await b.close()


async def test_redis_buckets_match_the_local_arithmetic(redis: RedisServer) -> None:
    shared = RedisLimiter(redis.url, timeout_s=0.5, key_prefix="t2:")
    local = LocalLimiter()
    try:
        for cost in (400, 500, 300, 50):
            remote_wait = await shared.acquire("t:k", cost, 1000)
            local_wait = local.take("t:k", cost, 1000)
            assert remote_wait == pytest.approx(local_wait, abs=0.05), cost
    finally:
        await shared.close()


async def test_when_redis_is_down_limits_degrade_to_the_process_and_come_back() -> None:
    server = RedisServer().start()
    clock = Clock()
    primary = RedisLimiter(server.url, timeout_s=0.2, key_prefix="t3:")
    limiter = FailoverLimiter(primary, LocalLimiter(), retry_interval_s=5.0, clock=clock)
    try:
        assert await limiter.acquire("r:k", 1, 2) == 0.0
        server.stop()
        started = time.monotonic()
        assert await limiter.acquire("r:k", 1, 2) == 0.0  # local bucket: fresh
        assert time.monotonic() - started < 1.0  # one bounded attempt, no 500, no hang
        assert limiter.degraded and limiter.failovers == 1
        assert await limiter.acquire("r:k", 1, 2) == 0.0
        assert await limiter.acquire("r:k", 1, 2) > 0  # still limited, per process
        server.start()
        assert await limiter.acquire("r:k", 1, 2) > 0  # resting: Redis not tried yet
        clock.now += 5.0
        # Redis again (restarted empty): a full bucket where the local one is spent.
        assert await limiter.acquire("r:k", 1, 2) == 0.0
        assert not limiter.degraded and limiter.failovers == 1
    finally:
        await limiter.close()
        server.stop()


# --- the app: requests per minute --------------------------------------------------------------

KEY_A = "sk-tenant-a-0123456789abcdef"
KEY_B = "sk-tenant-b-0123456789abcdef"


def test_a_key_past_its_requests_per_minute_gets_429_with_retry_after() -> None:
    env = {
        "DUALPATH_API_KEYS": f"a:{KEY_A},b:{KEY_B}:admin",
        "DUALPATH_RATE_LIMITS_REQUESTS_PER_MIN": "3",
    }
    with TestClient(create_app(load_settings(env=env))) as client:
        a = {"authorization": f"Bearer {KEY_A}"}
        assert [client.get("/v1/models", headers=a).status_code for _ in range(3)] == [200] * 3
        refused = client.get("/v1/models", headers=a)
        assert refused.status_code == 429
        assert 1 <= int(refused.headers["retry-after"]) <= 20
        error = refused.json()["error"]
        assert error["code"] == "rate_limit_exceeded" and error["type"] == "rate_limit_error"
        assert "requests per minute" in error["message"] and KEY_A not in refused.text
        b = {"authorization": f"Bearer {KEY_B}"}
        assert client.get("/v1/models", headers=b).status_code == 200  # per key
        assert client.get("/health").status_code == 200  # probes are never limited
        unknown = client.get("/v1/models", headers={"authorization": "Bearer sk-nobody-0123456789"})
        assert unknown.status_code == 401  # an unknown key is refused before any bucket


# --- two gateway processes, one Redis ---------------------------------------------------------

RPM_KEY = "sk-rpm-limited-0123456789abcdef"
DOWN_KEY = "sk-rpm-outage-0123456789abcdef"
TPM_KEY = "sk-tpm-limited-0123456789abcdef"
TOKENS_PER_MIN = 300


@pytest.fixture(scope="module")
def gateways(redis: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    """Two `dualpath serve` on one prefill/decode pair and one Redis, limits from a keys file."""
    tmp = tmp_path_factory.mktemp("limits")
    keys = tmp / "keys.yaml"
    entries = [
        {"tenant": "rpm", "key_sha256": hash_key(RPM_KEY), "requests_per_min": 4},
        {"tenant": "down", "key_sha256": hash_key(DOWN_KEY), "requests_per_min": 2},
        {"tenant": "tpm", "key_sha256": hash_key(TPM_KEY), "tokens_per_min": TOKENS_PER_MIN},
    ]
    keys.write_text(yaml.safe_dump({"keys": entries}))
    prefill, boot, decode = free_port(), free_port(), free_port()
    common = ["--time-scale", "0", "--model", MODEL]
    workers = [
        dualpath("worker", "--role", "prefill", "--port", str(prefill),
                 "--bootstrap-port", str(boot), *common),
        dualpath("worker", "--role", "decode", "--port", str(decode), *common),
    ]  # fmt: skip
    cluster = tmp / "cluster.yaml"
    cluster.write_text(
        yaml.safe_dump(
            {
                "workers": [
                    {
                        "url": f"http://127.0.0.1:{prefill}",
                        "role": "prefill",
                        "bootstrap_port": boot,
                    },
                    {"url": f"http://127.0.0.1:{decode}", "role": "decode"},
                ]
            }
        )
    )
    ports = [free_port(), free_port()]
    with contextlib.ExitStack() as stack:
        for cmd, port in zip(workers, (prefill, decode), strict=True):
            stack.enter_context(running(cmd, f"http://127.0.0.1:{port}/health", timeout=60))
        for port in ports:
            cmd = dualpath("serve", "--config", str(cluster), "--port", str(port))
            cmd += ["--redis", redis.url, "--api-keys-file", str(keys)]
            stack.enter_context(running(cmd, f"http://127.0.0.1:{port}/ready", timeout=60))
        yield [f"http://127.0.0.1:{p}" for p in ports]


def _models(base: str, key: str) -> httpx.Response:
    return httpx.get(base + "/v1/models", headers={"authorization": f"Bearer {key}"}, timeout=10)


def _chat(base: str, key: str, max_tokens: int) -> httpx.Response:
    return httpx.post(
        base + "/v1/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
              "max_tokens": max_tokens},
        headers={"authorization": f"Bearer {key}"},
        timeout=30,
    )  # fmt: skip


@pytest.mark.slow
def test_two_gateways_share_one_keys_requests_per_minute(gateways: list[str]) -> None:
    a, b = gateways
    assert [_models(base, RPM_KEY).status_code for base in (a, b, a, b)] == [200] * 4
    for base in (a, b):
        refused = _models(base, RPM_KEY)
        assert refused.status_code == 429, refused.text
        assert 1 <= int(refused.headers["retry-after"]) <= 15
        assert refused.json()["error"]["code"] == "rate_limit_exceeded"


@pytest.mark.slow
def test_two_gateways_share_one_keys_tokens_per_minute(gateways: list[str]) -> None:
    a, b = gateways
    first = _chat(a, TPM_KEY, max_tokens=200)  # reserves the prompt + 200 of 300
    assert first.status_code == 200, first.text
    prompt = first.json()["usage"]["prompt_tokens"]
    assert prompt + 200 < TOKENS_PER_MIN
    refused = _chat(b, TPM_KEY, max_tokens=200)  # the other gateway knows what A reserved
    assert refused.status_code == 429, refused.text
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert "tokens per minute" in refused.json()["error"]["message"]
    # Missing about prompt + 200 - (300 - prompt - 200) tokens at 5 per second.
    assert 10 <= int(refused.headers["retry-after"]) <= 60
    small = _chat(b, TPM_KEY, max_tokens=4)  # what is left still admits a small request
    assert small.status_code == 200, small.text


@pytest.mark.slow
def test_with_redis_down_each_gateway_limits_alone_and_nothing_fails(
    gateways: list[str], redis: RedisServer
) -> None:
    a, b = gateways
    redis.stop()
    try:
        codes = [_models(base, DOWN_KEY).status_code for base in (a, a, a, b, b, b)]
        # Each process's own bucket of 2: no 5xx, no shared count while Redis is gone.
        assert codes == [200, 200, 429, 200, 200, 429]
        wrong = _models(a, DOWN_KEY[:-1] + "X")
        assert wrong.status_code == 401  # keys are still checked while degraded
        assert _chat(b, TPM_KEY, max_tokens=4).status_code in (200, 429)  # served, not failed
    finally:
        redis.start()
