"""Gateway-side cost of identifying and hashing an agent turn, as the context grows.

For each context size (8K … 512K tokens) a coding-agent conversation is built (a system prompt,
then assistant replies of ~170 tokens and tool results of ~430), its session is committed once,
and then turns that append 429 tokens (a reply and a tool result) are timed end to end on the
gateway's path: session-id lookup, canonical JSON of the messages, `SessionTracker.begin` (store
look-up, digest check, render + hash of the appended part) and `finish` (the commit). Both a named
session (`X-Session-ID`) and an unnamed one (inferred from the prompt) are timed. Also measured:
memory per session in the in-process store at 32K context, and Redis round trips per turn against
a real redis-server. Targets: ≤ 1 ms p50 at every size, flat as context grows (the slope is
reported), ≤ 8 KB per session, ≤ 2 round trips.

    .venv/bin/python bench/session_hashing.py --out bench/results/session_hashing.json
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import statistics
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

import orjson

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.overhead.machine import describe  # noqa: E402
from engines.tokenizer import WordPieceTokenizer  # noqa: E402
from gateway.embedded_redis import redis_server  # noqa: E402
from gateway.prompt_tokens import TemplateTokens  # noqa: E402
from kvstore import block_key  # noqa: E402
from session.identity import claimed_session  # noqa: E402
from session.memory_store import MemorySessionStore  # noqa: E402
from session.redis_store import RedisSessionStore  # noqa: E402
from session.store import SessionStore  # noqa: E402
from session.tracker import Prompt, SessionTracker, TurnOutcome  # noqa: E402

WORDS = "read the file and run tests then fix code in session tracker with care".split()
SIZES = (8_000, 32_000, 128_000, 512_000)
RENDERER = TemplateTokens(WordPieceTokenizer())


def text(seed: int, tokens: int) -> str:
    """About `tokens` tokens of varied words (the default tokenizer: one token per word)."""
    return " ".join(f"{WORDS[(seed + i) % len(WORDS)]}{i % 97}" for i in range(tokens // 2))


def conversation(tag: str, context: int) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = [{"role": "system", "content": f"[{tag}] " + text(0, 2000)}]
    messages.append({"role": "user", "content": text(1, 200)})
    size, i = 2200, 0
    while size < context:
        messages.append({"role": "assistant", "content": text(i, 170)})
        messages.append({"role": "tool", "tool_call_id": f"c{i}", "content": text(i + 5, 430)})
        size, i = size + 600, i + 1
    return messages


def appended(messages: list[dict[str, Any]], turn: int) -> list[dict[str, Any]]:
    """The next turn's prompt: 429 tokens more (a reply and a tool result)."""
    return [
        *messages,
        {"role": "assistant", "content": text(turn, 150)},
        {"role": "tool", "tool_call_id": f"n{turn}", "content": text(turn + 3, 279)},
    ]


def outcome() -> TurnOutcome:
    return TurnOutcome(150, 0.5, 0.02, "http://p0", "http://d0", time.time())


async def one_turn(
    tracker: SessionTracker, messages: list[dict[str, Any]], named: str | None
) -> tuple[int, float, float]:
    """The gateway's per-turn session work: (hit tokens, serialise seconds, session seconds).

    Serialising the messages is timed apart: the gateway sends those same bytes upstream, so
    it would pay for them without sessions too.
    """
    t0 = time.perf_counter()
    canonical = orjson.dumps(messages)
    t1 = time.perf_counter()
    headers = {"x-session-id": named} if named else {}
    claimed = claimed_session(headers, {"model": "m", "messages": messages})
    plan = await tracker.begin(Prompt("tenant", "m", claimed, messages, canonical))
    await tracker.finish(plan, outcome())
    t2 = time.perf_counter()
    return plan.hit_tokens, t1 - t0, t2 - t1


async def time_size(store: SessionStore, context: int, sessions: int) -> dict[str, Any]:
    out: dict[str, Any] = {"context_tokens": context}
    for mode in ("named", "unnamed"):
        tracker = SessionTracker(store, RENDERER, block_key)
        session_s: list[float] = []
        serialise_s: list[float] = []
        for s in range(sessions):
            base = conversation(f"{mode}-{context}-{s}", context)
            name = f"{mode}-{context}-{s}" if mode == "named" else None
            await one_turn(tracker, base, name)  # first sight: hashed from scratch, not timed
            for turn in range(3):
                base = appended(base, turn)
                gc.collect()
                hit, serialise, work = await one_turn(tracker, base, name)
                assert hit > 0, "the turn was not recognised"
                session_s.append(work)
                serialise_s.append(serialise)
        session_s.sort()
        out[mode] = {
            "p50_ms": statistics.median(session_s) * 1e3,
            "p90_ms": session_s[int(len(session_s) * 0.9)] * 1e3,
            "serialise_messages_p50_ms": statistics.median(serialise_s) * 1e3,
            "samples": len(session_s),
        }
    return out


def slope_us_per_1k(results: list[dict[str, Any]], mode: str) -> float | None:
    if len(results) < 2:
        return None
    xs = [r["context_tokens"] / 1000 for r in results]
    ys = [r[mode]["p50_ms"] * 1000 for r in results]
    return statistics.linear_regression(xs, ys).slope


async def memory_per_session(context: int, count: int) -> float:
    store = MemorySessionStore()
    tracker = SessionTracker(store, RENDERER, block_key)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for s in range(count):
        await one_turn(tracker, conversation(f"mem-{s}", context), f"mem-{s}")
    gc.collect()
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    return used / count


async def redis_round_trips(url: str) -> dict[str, Any]:
    store = RedisSessionStore(url)
    tracker = SessionTracker(store, RENDERER, block_key)
    out: dict[str, Any] = {}
    try:
        for mode, name in (("named", "rt-named"), ("unnamed", None)):
            base = conversation(f"rt-{mode}", 32_000)
            await one_turn(tracker, base, name)
            before = store.round_trips
            for turn in range(5):
                base = appended(base, turn)
                await one_turn(tracker, base, name)
            out[mode] = (store.round_trips - before) / 5
        timed = await time_size(store, 32_000, 2)
        out["p50_ms_at_32k"] = {m: timed[m]["p50_ms"] for m in ("named", "unnamed")}
    finally:
        await store.close()
    return out


async def run(args: argparse.Namespace) -> dict[str, Any]:
    store = MemorySessionStore()
    results = []
    for size in args.sizes:
        results.append(await time_size(store, size, args.sessions))
        print(json.dumps(results[-1]), flush=True)
    with redis_server() as server:
        redis = await redis_round_trips(server.url)
    return {
        "benchmark": "session_hashing",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": describe(REPO),
        "append_tokens": 429,
        "results": results,
        "slope_us_per_1k_context_tokens": {
            m: slope_us_per_1k(results, m) for m in ("named", "unnamed")
        },
        "memory_bytes_per_session_at_32k": await memory_per_session(32_000, args.memory_sessions),
        "redis_round_trips_per_turn": redis,
        "targets": {"p50_ms": 1.0, "bytes_per_session_at_32k": 8192, "redis_round_trips": 2},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=REPO / "bench/results/session_hashing.json")
    p.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    p.add_argument("--sessions", type=int, default=5, help="sessions timed per size and mode")
    p.add_argument("--memory-sessions", type=int, default=100)
    args = p.parse_args(argv)
    report = asyncio.run(run(args))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(
        json.dumps({k: v for k, v in report.items() if k not in ("machine", "results")}, indent=2)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
