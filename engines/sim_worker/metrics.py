"""Prometheus metrics with SGLang's `sglang:*` names, on a registry owned by one app."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


@dataclass(frozen=True, slots=True)
class LoadSnapshot:
    """The worker's load, read by /metrics, /get_load and /v1/loads alike so they agree."""

    num_running_reqs: int
    num_waiting_reqs: int
    num_used_tokens: int
    max_total_num_tokens: int
    cache_hit_rate: float
    gen_throughput: float
    prefill_prealloc_queue_reqs: int
    prefill_inflight_queue_reqs: int
    decode_prealloc_queue_reqs: int
    decode_transfer_queue_reqs: int
    read_q_bytes: float = 0.0
    """Modelled bytes queued on the node's storage NIC (the paper's read_q)."""
    cnic_q_bytes: float = 0.0
    """Modelled bytes queued on the node's compute NIC."""

    @property
    def token_usage(self) -> float:
        return self.num_used_tokens / max(self.max_total_num_tokens, 1)


_GAUGES: dict[str, str] = {
    "num_running_reqs": "Running requests",
    "num_queue_reqs": "Waiting requests",
    "num_used_tokens": "KV tokens in use",
    "max_total_num_tokens": "KV pool size in tokens",
    "token_usage": "KV pool usage (0-1)",
    "cache_hit_rate": "Prefix cache hit rate (cached / prompt tokens)",
    "gen_throughput": "Generation throughput (tokens/s)",
    "num_prefill_prealloc_queue_reqs": "Prefill requests waiting for their decode",
    "num_prefill_inflight_queue_reqs": "Prefill results waiting to be collected",
    "num_decode_prealloc_queue_reqs": "Decode requests waiting for KV pages",
    "num_decode_transfer_queue_reqs": "Decode requests waiting for their prefill's KV",
}


_LINK_GAUGES: dict[str, str] = {
    "read_q_bytes": "Modelled bytes queued on the node's storage NIC",
    "cnic_q_bytes": "Modelled bytes queued on the node's compute NIC",
}


class _KVCounters(Collector):
    """`dualpath:kv_*_total` counters read from the worker's KV I/O counters at scrape time."""

    def __init__(self, read: Callable[[], Mapping[str, float]], labels: dict[str, str]) -> None:
        self._read = read
        self._labels = labels

    def collect(self) -> Iterator[Metric]:
        for name, value in self._read().items():
            family = CounterMetricFamily(
                f"dualpath:kv_{name}", f"KV I/O: {name.replace('_', ' ')}", labels=self._labels
            )
            family.add_metric(list(self._labels.values()), value)
            yield family


def _reader(load: Callable[[], LoadSnapshot], name: str) -> Callable[[], float]:
    field = {
        "num_queue_reqs": "num_waiting_reqs",
        "num_prefill_prealloc_queue_reqs": "prefill_prealloc_queue_reqs",
        "num_prefill_inflight_queue_reqs": "prefill_inflight_queue_reqs",
        "num_decode_prealloc_queue_reqs": "decode_prealloc_queue_reqs",
        "num_decode_transfer_queue_reqs": "decode_transfer_queue_reqs",
    }.get(name, name)
    return lambda: float(getattr(load(), field))


class SimMetrics:
    def __init__(
        self,
        model_name: str,
        engine_type: str,
        load: Callable[[], LoadSnapshot],
        kv_counters: Callable[[], Mapping[str, float]] = dict,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        labels = {"model_name": model_name, "engine_type": engine_type}
        names = list(labels)

        def counter(name: str, doc: str) -> Counter:
            return Counter(f"sglang:{name}", doc, names, registry=self.registry).labels(**labels)

        self.prompt_tokens = counter("prompt_tokens", "Prompt tokens processed")
        self.generation_tokens = counter("generation_tokens", "Tokens generated")
        self.cached_tokens = counter("cached_tokens", "Prompt tokens served from the prefix cache")
        self.requests = counter("num_requests", "Requests finished")
        self.aborted = counter("num_aborted_requests", "Requests aborted")
        self.ttft = Histogram(
            "sglang:time_to_first_token_seconds",
            "Time to first token",
            names,
            buckets=TTFT_BUCKETS,
            registry=self.registry,
        ).labels(**labels)
        for name, doc in _GAUGES.items():
            gauge = Gauge(f"sglang:{name}", doc, names, registry=self.registry)
            gauge.labels(**labels).set_function(_reader(load, name))
        for name, doc in _LINK_GAUGES.items():
            gauge = Gauge(f"dualpath:{name}", doc, names, registry=self.registry)
            gauge.labels(**labels).set_function(_reader(load, name))
        self.registry.register(_KVCounters(kv_counters, labels))

    def render(self) -> bytes:
        return generate_latest(self.registry)
