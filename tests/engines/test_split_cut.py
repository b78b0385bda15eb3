"""Read path `split`: where both workers cut a request's hit blocks, and the extension naming it."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engines.sim_worker.errors import BadRequest
from engines.sim_worker.inputs import READ_PATHS, KVDirective, parse_kv_directive
from engines.sim_worker.kv_io import split_cut

ROOT_HEX = "ab" * 16


@pytest.mark.parametrize(
    ("usable", "expected", "share", "cut"),
    [
        (6, None, 0.5, 3),
        (6, None, 0.0, 0),
        (6, None, 1.0, 6),
        (7, 384, 0.5, 3),  # the gateway expects six blocks: the share is of those
        (7, 383, 1.0, 5),  # a partial block is no hit
        (4, 10_000, 1.0, 4),  # the prefill may not load more than it has usable
        (5, None, 0.4, 2),
        (0, None, 0.7, 0),
        (5, -64, 0.5, 0),
    ],
)
def test_split_cut_examples(usable: int, expected: int | None, share: float, cut: int) -> None:
    assert split_cut(usable, expected, 64, share) == cut


@given(
    usable=st.integers(0, 10_000),
    expected=st.none() | st.integers(-1_000, 1_000_000),
    block_tokens=st.integers(1, 256),
    shares=st.lists(st.floats(0.0, 1.0), min_size=2, max_size=2),
)
def test_split_cut_stays_within_the_expected_hit(
    usable: int, expected: int | None, block_tokens: int, shares: list[float]
) -> None:
    n = usable if expected is None else min(usable, max(expected, 0) // block_tokens)
    low, high = sorted(shares)
    k_low = split_cut(usable, expected, block_tokens, low)
    k_high = split_cut(usable, expected, block_tokens, high)
    assert 0 <= k_low <= k_high <= n  # and a larger share never gives the prefill less
    assert split_cut(usable, expected, block_tokens, 0.0) == 0  # as read path `de`
    assert split_cut(usable, expected, block_tokens, 1.0) == n  # as read path `pe`


def test_split_is_a_read_path() -> None:
    assert "split" in READ_PATHS
    ext = {"kv_root": ROOT_HEX, "read_path": "split", "stager": "http://d:1",
           "pe_share": 0.25, "expected_hit_tokens": 640}  # fmt: skip
    d = parse_kv_directive({"dualpath": ext})
    assert d == KVDirective(bytes.fromhex(ROOT_HEX), "split", "http://d:1", 640, 0.25)
    whole = parse_kv_directive(
        {"dualpath": {"read_path": "split", "stager": "http://d:1", "pe_share": 1}}
    )
    assert whole is not None and whole.pe_share == 1.0 and isinstance(whole.pe_share, float)


@pytest.mark.parametrize("path", ["pe", "de"])
def test_pe_share_is_ignored_off_the_split_path(path: str) -> None:
    d = parse_kv_directive({"dualpath": {"read_path": path, "stager": "http://d:1", "pe_share": 7}})
    assert d is not None and d.pe_share is None


@pytest.mark.parametrize(
    "share", [None, math.nan, math.inf, -math.inf, -0.01, 1.5, True, False, "0.5", [0.5]]
)
def test_a_bad_pe_share_is_a_400(share: object) -> None:
    ext = {"read_path": "split", "stager": "http://d:1", "pe_share": share}
    with pytest.raises(BadRequest, match="pe_share"):
        parse_kv_directive({"dualpath": ext})


def test_split_needs_a_pe_share() -> None:
    with pytest.raises(BadRequest, match="pe_share"):
        parse_kv_directive({"dualpath": {"read_path": "split", "stager": "http://d:1"}})


def test_split_needs_a_stager() -> None:
    with pytest.raises(BadRequest, match="stager"):
        parse_kv_directive({"dualpath": {"read_path": "split", "pe_share": 0.5}})
