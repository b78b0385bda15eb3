"""The `dualpath` extension goes only to workers that advertise it."""

from __future__ import annotations

from engines.worker_registry import Worker
from gateway.kv_route import KVRoute
from gateway.placement import PDPair

KV_INFO = {"dualpath_kv": {"read_paths": ["pe", "de", "split"]}}
OLD_INFO = {"dualpath_kv": {"read_paths": ["pe", "de"]}}


def _pair(prefill_info: dict[str, object], decode_info: dict[str, object]) -> PDPair:
    return PDPair(
        Worker("http://p:1", "prefill", 8998, "m", True, info=prefill_info),
        Worker("http://d:2", "decode", None, "m", True, info=decode_info),
    )


def test_read_path_de_names_the_decode_as_stager() -> None:
    ext = KVRoute(bytes(range(16)), "de", 0.0, 128).extension(_pair(KV_INFO, KV_INFO))
    assert ext == {
        "kv_root": bytes(range(16)).hex(),
        "read_path": "de",
        "stager": "http://d:2",
        "expected_hit_tokens": 128,
    }


def test_read_path_pe_has_no_stager() -> None:
    ext = KVRoute(bytes(16)).extension(_pair(KV_INFO, KV_INFO))
    assert ext == {"kv_root": "00" * 16, "read_path": "pe"}


def test_a_stock_worker_on_either_side_gets_no_extension() -> None:
    route = KVRoute(bytes(16), "de")
    assert route.extension(_pair({}, KV_INFO)) is None
    assert route.extension(_pair(KV_INFO, {"dualpath_kv": None})) is None


def test_split_carries_the_prefill_share() -> None:
    ext = KVRoute(bytes(16), "split", 0.25).extension(_pair(KV_INFO, KV_INFO))
    assert ext == {
        "kv_root": "00" * 16,
        "read_path": "split",
        "stager": "http://d:2",
        "pe_share": 0.25,
    }


def test_a_path_a_worker_does_not_list_falls_back_to_the_prefill_side() -> None:
    ext = KVRoute(bytes(16), "split", 0.25).extension(_pair(KV_INFO, OLD_INFO))
    assert ext == {"kv_root": "00" * 16, "read_path": "pe"}
