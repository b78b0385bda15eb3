from __future__ import annotations

import orjson
from hypothesis import given
from hypothesis import strategies as st

from gateway.usage import SSEUsageFilter, patch_response_usage


def _event(obj: object) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


CONTENT = _event({"id": "x", "choices": [{"index": 0, "delta": {"content": "hi"}}]})
USAGE = _event({"id": "x", "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}})
STREAM = CONTENT * 3 + USAGE + b"data: [DONE]\n\n"


def _run(stream: bytes, cuts: list[int], include_usage: bool) -> tuple[bytes, SSEUsageFilter]:
    f = SSEUsageFilter(include_usage)
    points = sorted({c % (len(stream) + 1) for c in cuts})
    pieces = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]
    out = b"".join(f.feed(p) for p in pieces if p) + f.flush()
    return out, f


@given(st.lists(st.integers(min_value=0, max_value=10_000), max_size=12))
def test_usage_chunk_dropped_when_not_asked_for_any_split(cuts: list[int]) -> None:
    out, f = _run(STREAM, cuts, include_usage=False)
    assert out == CONTENT * 3 + b"data: [DONE]\n\n"
    assert f.usage == {
        "prompt_tokens": 3,
        "completion_tokens": 2,
        "prompt_tokens_details": {"cached_tokens": 0},
    }


@given(st.lists(st.integers(min_value=0, max_value=10_000), max_size=12))
def test_usage_chunk_kept_and_completed_when_asked_for_any_split(cuts: list[int]) -> None:
    out, _ = _run(STREAM, cuts, include_usage=True)
    events = [e for e in out.split(b"\n\n") if e]
    assert events[:3] == [CONTENT[:-2]] * 3 and events[-1] == b"data: [DONE]"
    usage = orjson.loads(events[3][6:])["usage"]
    assert usage["prompt_tokens_details"] == {"cached_tokens": 0}


def test_existing_cached_tokens_are_kept() -> None:
    usage_event = _event(
        {
            "choices": [],
            "usage": {"prompt_tokens": 9, "prompt_tokens_details": {"cached_tokens": 64}},
        }
    )
    out, f = _run(usage_event, [], include_usage=True)
    assert orjson.loads(out[6:])["usage"]["prompt_tokens_details"]["cached_tokens"] == 64
    assert f.usage is not None


def test_non_json_events_pass_through() -> None:
    weird = b'data: {"usage": oops\n\n: comment\n\n'
    out, _ = _run(weird, [5], include_usage=False)
    assert out == weird


def test_patch_response_usage_adds_cached_tokens() -> None:
    body = orjson.dumps({"id": "x", "usage": {"prompt_tokens": 1, "prompt_tokens_details": None}})
    patched, usage = patch_response_usage(body)
    assert orjson.loads(patched)["usage"]["prompt_tokens_details"] == {"cached_tokens": 0}
    assert usage is not None
    assert patch_response_usage(b"not json") == (b"not json", None)
