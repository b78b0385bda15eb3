"""Pure parts of the simulated worker: prefix cache, answer planning, room board."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from engines.sim_worker.errors import BadRequest
from engines.sim_worker.generation import choose_tool, plan_answer, request_seed
from engines.sim_worker.inputs import KVDirective, parse_kv_directive
from engines.sim_worker.prefix_cache import PrefixCache
from engines.sim_worker.rendezvous import RoomBoard, RoomResult
from engines.tokenizer import WordPieceTokenizer


def test_prefix_cache_matches_full_pages_and_keeps_one_token_to_compute() -> None:
    cache = PrefixCache(page_size=4, max_pages=100)
    prompt = list(range(10))
    assert cache.match(prompt) == 0
    cache.insert(prompt)
    assert len(cache) == 2  # only full pages are cached
    assert cache.match(prompt) == 8
    assert cache.match(list(range(8))) == 4  # the last token is always computed
    assert cache.match([*range(6), 99, 98, 97]) == 4  # diverges inside page 2
    assert cache.match([1, *range(1, 10)]) == 0


def test_prefix_cache_is_bounded_and_evicts_least_recently_used() -> None:
    cache = PrefixCache(page_size=2, max_pages=4)
    a, b = [1, 2, 3, 4, 5], [7, 8, 9, 10, 11]
    cache.insert(a)
    cache.insert(b)
    assert len(cache) == 4
    assert cache.match(a) == 4  # a is now the most recent
    cache.insert([20, 21, 22])  # one more page: b's tail page goes first
    assert len(cache) == 4
    assert cache.match(a) == 4
    assert cache.match(b) == 2
    cache.clear()
    assert cache.match(a) == 0


def test_plans_are_deterministic_per_seed() -> None:
    tok = WordPieceTokenizer()
    seed = request_seed(0, [1, 2, 3], None)
    assert seed == request_seed(0, [1, 2, 3], None) != request_seed(1, [1, 2, 3], None)
    assert request_seed(0, [1, 2, 3], 42) == 42
    p1 = plan_answer(tok, seed, min_tokens=4, max_tokens=20)
    p2 = plan_answer(tok, seed, min_tokens=4, max_tokens=20)
    assert p1 == p2 and 4 <= len(p1.token_ids) <= 20
    assert p1.token_ids[0] in tok.opening_vocab()
    assert all(t in tok.output_vocab() for t in p1.token_ids[1:])
    # A reply comes back in the next prompt as the same tokens, after the assistant's opening.
    assert tok.encode("assistant\n" + tok.decode(p1.token_ids))[-len(p1.token_ids) :] == list(
        p1.token_ids
    )


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer"},
            },
            "required": ["city"],
        },
    },
}


def test_tool_call_plan_has_json_arguments_from_the_schema() -> None:
    body = {"tools": [WEATHER], "messages": [{"role": "user", "content": "weather?"}]}
    tool = choose_tool(body)
    assert tool is not None and tool["name"] == "get_weather"
    plan = plan_answer(WordPieceTokenizer(), 7, min_tokens=1, max_tokens=2, tool=tool)
    assert plan.tool_call is not None
    args = orjson.loads(plan.tool_call.arguments)
    assert set(args) == {"city", "unit", "days"} and args["unit"] == "celsius"
    assert "".join(plan.tool_call.pieces) == plan.tool_call.arguments
    assert len(plan.token_ids) == len(plan.tool_call.pieces)
    assert plan.tool_call.call_id.startswith("call_")


@pytest.mark.parametrize(
    "change",
    [
        {"tool_choice": "none"},
        {"messages": [{"role": "tool", "tool_call_id": "c", "content": "sunny"}]},
        {"tools": []},
    ],
)
def test_no_tool_call_when_not_wanted(change: dict[str, object]) -> None:
    body = {"tools": [WEATHER], "messages": [{"role": "user", "content": "weather?"}], **change}
    assert choose_tool(body) is None


async def test_room_board_hands_a_result_to_an_early_or_late_collector() -> None:
    board: RoomBoard[RoomResult] = RoomBoard(ttl_s=60, max_rooms=2)
    waiter = asyncio.create_task(board.collect(1, timeout_s=5))
    await asyncio.sleep(0)  # let the waiter register
    board.publish(1, RoomResult(1, 5, 10, 0))
    assert (await waiter) == RoomResult(1, 5, 10, 0)
    board.publish(2, RoomResult(2, 6, 10, 4))
    assert await board.collect(2, timeout_s=0) == RoomResult(2, 6, 10, 4)
    assert await board.collect(3, timeout_s=0.01) is None


def test_room_board_is_bounded() -> None:
    board: RoomBoard[RoomResult] = RoomBoard(ttl_s=60, max_rooms=2)
    for room in range(5):
        board.publish(room, RoomResult(room, 1, 1, 0))
    assert len(board) == 2


@pytest.mark.parametrize(
    ("ext", "message"),
    [
        ("pe", "'dualpath' must be an object"),
        ({"kv_root": "abc"}, "32 hex digits"),
        ({"kv_root": "zz" * 16}, "32 hex digits"),
        ({"read_path": "sideways"}, "read_path"),
        ({"read_path": "split", "stager": "http://d"}, "pe_share"),
        ({"read_path": "de"}, "stager"),
        ({"expected_hit_tokens": "64"}, "expected_hit_tokens"),
    ],
)
def test_a_bad_kv_extension_is_a_400(ext: object, message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        parse_kv_directive({"dualpath": ext})


def test_the_kv_extension_parses() -> None:
    assert parse_kv_directive({}) is None
    d = parse_kv_directive(
        {"dualpath": {"kv_root": "ab" * 16, "read_path": "de", "stager": "http://d:1"}}
    )
    assert d == KVDirective(bytes.fromhex("ab" * 16), "de", "http://d:1", None)


def test_room_board_drops_the_oldest_past_its_byte_bound() -> None:
    board: RoomBoard[bytes] = RoomBoard(ttl_s=60, max_rooms=10, weigh=len, max_bytes=10)
    board.publish(1, b"aaaa")
    board.publish(2, b"bbbb")
    board.publish(3, b"cccc")  # 12 bytes: room 1 goes
    assert len(board) == 2

    async def collect() -> list[bytes | None]:
        return [await board.collect(r, 0) for r in (1, 2, 3)]

    assert asyncio.run(collect()) == [None, b"bbbb", b"cccc"]
