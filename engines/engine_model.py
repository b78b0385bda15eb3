"""The engine cost model: how long a GPU engine takes to prefill and to decode.

Pure: no I/O, no clock. Times are seconds derived from public model configs and a roofline of the
node (FLOP/s × achieved fraction, HBM bandwidth × achieved fraction, storage/compute NIC bandwidth).
The simulated worker (real time) and the virtual-clock simulator (virtual time) run these same
objects, so a figure from one can be checked against the other.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

GB = 1e9


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """Public architecture facts of one model, enough to derive FLOPs and KV bytes."""

    name: str
    layers: int
    hidden: int
    active_params: float
    """Parameters touched per token (MoE: shared + routed experts actually used)."""
    total_params: float
    weight_bytes_per_param: float
    """1 for FP8 weights, 2 for bf16."""
    kv_bytes_per_token_layer: float
    """Bytes of KV cache one token occupies in one layer (stored and loaded)."""
    attn_flops_per_pair_layer: float
    """FLOPs for one (query token, context token) pair in one layer: QK^T plus PV."""
    gemm_speedup: float = 1.0
    """Linear-layer FLOP rate over the bf16 rate: 2 where the weights are FP8 and the GEMMs run
    in FP8 (DeepGEMM on Hopper, as the paper's Basic and DualPath both do). FLOPs below are
    counted at the bf16 rate, so an FP8 GEMM's count is halved."""
    sparse_topk: int | None = None
    """DeepSeek Sparse Attention: each query attends to at most this many tokens."""
    indexer_flops_per_pair_layer: float = 0.0
    """Lightning-indexer FLOPs per (query, context) pair per layer; runs over the full context."""
    indexer_bytes_per_token_layer: float = 0.0
    """Indexer key bytes per token per layer, read over the full context at every decode step."""
    context_length: int = 131072

    @property
    def kv_bytes_per_token(self) -> float:
        return self.kv_bytes_per_token_layer * self.layers

    def attended(self, context: float) -> float:
        """Context tokens one query actually attends to."""
        return context if self.sparse_topk is None else min(context, float(self.sparse_topk))


@dataclass(frozen=True, slots=True)
class NodeSpec:
    """One engine's hardware: a node of GPUs with its storage and compute NICs."""

    name: str
    gpus: int
    flops_per_gpu: float
    """Dense bf16 FLOP/s per GPU (peak)."""
    hbm_bytes_per_s_per_gpu: float
    snic_bytes_per_s: float
    """Storage NIC bandwidth of the node (one 400 Gbps NIC ≈ 50 GB/s)."""
    cnic_bytes_per_s: float
    """Compute-network bandwidth of the node (8 × 400 Gbps)."""
    mfu: float = 0.4
    """Achieved fraction of peak FLOP/s."""
    mbu: float = 0.6
    """Achieved fraction of peak HBM bandwidth."""
    step_overhead_s: float = 0.002
    """Fixed per-forward cost (kernel launches, scheduling, sampling)."""
    hbm_bytes_per_gpu: float = 80 * GB
    reserved_bytes_per_gpu: float = 0.0
    """HBM per GPU that neither weights nor KV get: activations, CUDA graphs, communication
    buffers. What is left after the weights is the KV pool (`EngineModel.kv_pool_tokens`)."""

    @property
    def flops(self) -> float:
        return self.gpus * self.flops_per_gpu * self.mfu

    @property
    def hbm_bytes_per_s(self) -> float:
        return self.gpus * self.hbm_bytes_per_s_per_gpu * self.mbu


def _mla_kv_entry(indexer_bytes: float) -> float:
    # FP8 MLA entry: 512 FP8 latent + 4 fp32 scales + 64 bf16 RoPE dims = 656 B, plus indexer key.
    return 512 + 4 * 4 + 64 * 2 + indexer_bytes


MODELS: dict[str, ModelSpec] = {
    "ds-v3.2-660b": ModelSpec(
        name="ds-v3.2-660b",
        layers=61,
        hidden=7168,
        active_params=37e9,
        total_params=671e9,
        weight_bytes_per_param=1.0,
        gemm_speedup=2.0,
        kv_bytes_per_token_layer=_mla_kv_entry(132),
        # Absorbed MLA: 128 heads × (512 + 64) dims for QK, 128 × 512 for PV, 2 FLOPs per MAC.
        attn_flops_per_pair_layer=2 * 128 * (576 + 512),
        sparse_topk=2048,
        indexer_flops_per_pair_layer=2 * 64 * 128 / 2,  # FP8 runs at twice the bf16 rate
        indexer_bytes_per_token_layer=132,
        context_length=163840,
    ),
    "ds-27b": ModelSpec(
        name="ds-27b",
        layers=30,
        hidden=2560,
        # 1 dense layer (MLP 12288) + 29 MoE layers (2 shared + 6 routed of 1536) + attention.
        active_params=4.1e9,
        total_params=27e9,
        weight_bytes_per_param=1.0,
        gemm_speedup=2.0,
        kv_bytes_per_token_layer=_mla_kv_entry(68),
        attn_flops_per_pair_layer=2 * 32 * (576 + 512),
        sparse_topk=1024,
        indexer_flops_per_pair_layer=2 * 32 * 64 / 2,
        indexer_bytes_per_token_layer=68,
        context_length=65536,
    ),
    "qwen2.5-32b": ModelSpec(
        name="qwen2.5-32b",
        layers=64,
        hidden=5120,
        active_params=32.5e9,
        total_params=32.5e9,
        weight_bytes_per_param=2.0,
        kv_bytes_per_token_layer=2 * 8 * 128 * 2,  # K+V, 8 KV heads × 128 dims, fp16
        attn_flops_per_pair_layer=2 * 40 * 128 * 2,  # QK and PV over 40 query heads
        context_length=131072,
    ),
    # A toy model for demos and tests: fast, but with visible streaming.
    "tiny": ModelSpec(
        name="tiny",
        layers=4,
        hidden=256,
        active_params=50e6,
        total_params=50e6,
        weight_bytes_per_param=2.0,
        kv_bytes_per_token_layer=2 * 2 * 64 * 2,
        attn_flops_per_pair_layer=2 * 4 * 64 * 2,
        context_length=32768,
    ),
}

# The paper's testbed: 8 Hopper GPUs a node, one node per engine, DeepSeek-V3.2's 671 GB of FP8
# weights on each. Of the Hopper parts only the 141 GB H200 holds them with room for KV and the
# compute the paper's throughput needs (8 × 80 GB cannot hold them; the H20 computes ~7× slower).
HOPPER_NODE = NodeSpec(
    name="8xH200",
    gpus=8,
    flops_per_gpu=989e12,
    hbm_bytes_per_s_per_gpu=4.8e12,
    snic_bytes_per_s=50 * GB,
    cnic_bytes_per_s=8 * 50 * GB,
    # MoE decode with expert parallelism pays all-to-all dispatch/combine on every step.
    step_overhead_s=0.010,
    hbm_bytes_per_gpu=141 * GB,
    reserved_bytes_per_gpu=12 * GB,  # an assumption: the paper gives no memory breakdown
)

# The demo "GPU": slow enough that a stream is visible, fast enough for tests.
TOY_NODE = NodeSpec(
    name="toy",
    gpus=1,
    flops_per_gpu=2e12,
    hbm_bytes_per_s_per_gpu=50e9,
    snic_bytes_per_s=5 * GB,
    cnic_bytes_per_s=10 * GB,
    mfu=1.0,
    mbu=1.0,
    step_overhead_s=0.004,
    hbm_bytes_per_gpu=4.1 * GB,  # 4 GB of KV next to the tiny model's 0.1 GB
)


def default_node(model_name: str) -> NodeSpec:
    return TOY_NODE if model_name == "tiny" else HOPPER_NODE


@dataclass(frozen=True, slots=True)
class EngineModel:
    """Prefill and decode times of one engine running one model on one node."""

    model: ModelSpec
    node: NodeSpec = field(default=HOPPER_NODE)

    @classmethod
    def named(cls, model_name: str, node: NodeSpec | None = None) -> EngineModel:
        try:
            spec = MODELS[model_name]
        except KeyError:
            known = ", ".join(sorted(MODELS))
            raise ValueError(f"unknown model {model_name!r}; known: {known}") from None
        return cls(spec, node or default_node(model_name))

    def with_nics(self, snic_gbps: float | None, cnic_gbps: float | None) -> EngineModel:
        """The same engine on a node with other storage / compute NICs (GB/s; None: keep)."""
        node = self.node
        if snic_gbps is not None:
            node = dataclasses.replace(node, snic_bytes_per_s=snic_gbps * GB)
        if cnic_gbps is not None:
            node = dataclasses.replace(node, cnic_bytes_per_s=cnic_gbps * GB)
        return EngineModel(self.model, node)

    def slowed(self, factor: float) -> EngineModel:
        """Every modelled duration × `factor` (a simulated worker's `--time-scale`)."""
        if not factor > 0:
            raise ValueError("a slow-down factor must be positive")
        n = self.node
        node = dataclasses.replace(
            n,
            flops_per_gpu=n.flops_per_gpu / factor,
            hbm_bytes_per_s_per_gpu=n.hbm_bytes_per_s_per_gpu / factor,
            snic_bytes_per_s=n.snic_bytes_per_s / factor,
            cnic_bytes_per_s=n.cnic_bytes_per_s / factor,
            step_overhead_s=n.step_overhead_s * factor,
        )
        return EngineModel(self.model, node)

    def kv_bytes(self, tokens: float) -> float:
        return tokens * self.model.kv_bytes_per_token

    @property
    def kv_pool_tokens(self) -> int:
        """Tokens of KV one engine holds: its node's HBM less the reserve and the weights."""
        n, m = self.node, self.model
        free = n.gpus * (n.hbm_bytes_per_gpu - n.reserved_bytes_per_gpu)
        free -= m.total_params * m.weight_bytes_per_param
        if free <= 0:
            raise ValueError(f"{m.name}'s weights do not fit in the HBM of a {n.name} node")
        return int(free / m.kv_bytes_per_token)

    @property
    def layers(self) -> int:
        return self.model.layers

    @property
    def snic_bytes_per_s(self) -> float:
        return self.node.snic_bytes_per_s

    @property
    def cnic_bytes_per_s(self) -> float:
        return self.node.cnic_bytes_per_s

    def prefill_flops(self, append_tokens: int, cached_tokens: int) -> float:
        """FLOPs (at the bf16 rate) to compute `append_tokens` new tokens on top of
        `cached_tokens` of context."""
        if append_tokens <= 0:
            return 0.0
        m = self.model
        linear = 2.0 * m.active_params * append_tokens / m.gemm_speedup
        # Query i (0-based) sees cached + i + 1 tokens; use the mean position for the sum.
        mean_context = cached_tokens + (append_tokens + 1) / 2.0
        attention = (
            m.attn_flops_per_pair_layer * m.layers * append_tokens * m.attended(mean_context)
        )
        indexer = m.indexer_flops_per_pair_layer * m.layers * append_tokens * mean_context
        return linear + attention + indexer

    def prefill_compute_s(self, append_tokens: int, cached_tokens: int) -> float:
        """GPU time of one prefill forward of this request alone (its KV already in HBM)."""
        return self.node.step_overhead_s + self.prefill_marginal_s(append_tokens, cached_tokens)

    def prefill_marginal_s(self, append_tokens: int, cached_tokens: int) -> float:
        """What this request adds to a batched prefill forward: its FLOPs. The forward's fixed
        cost (launches, EP dispatch, sampling) is paid once for the whole batch."""
        return self.prefill_flops(max(append_tokens, 1), cached_tokens) / self.node.flops

    def h2d_s(self, tokens: int) -> float:
        """Time to copy `tokens` of loaded KV from the node's DRAM buffer into HBM. Copies go
        through the GPUs' compute NICs (the paper's CNIC-centric traffic manager)."""
        return self.kv_bytes(tokens) / self.node.cnic_bytes_per_s

    def storage_read_s(self, tokens: int) -> float:
        """Time to load `tokens` of cached KV through one node's storage NIC, alone."""
        return self.kv_bytes(tokens) / self.node.snic_bytes_per_s

    def compute_transfer_s(self, tokens: int) -> float:
        """Time to move `tokens` of KV between nodes over the compute network, alone."""
        return self.kv_bytes(tokens) / self.node.cnic_bytes_per_s

    def decode_step_s(self, batch_size: int, context_tokens: int) -> float:
        """One decode iteration producing one token for each of `batch_size` sequences.

        `context_tokens` is the sum of the sequences' context lengths. The step is bound by the
        larger of memory traffic (weights + KV read) and compute, plus a fixed overhead, so TPOT
        rises with batch size and context as on a real engine.
        """
        if batch_size <= 0:
            return 0.0
        m = self.model
        # MoE: more distinct experts are touched as the batch grows, up to all of them.
        touched = min(m.total_params, m.active_params * (1.0 + 0.05 * (batch_size - 1)))
        weight_bytes = touched * m.weight_bytes_per_param
        mean_context = context_tokens / batch_size
        kv_read = (
            batch_size
            * m.layers
            * (
                m.attended(mean_context) * m.kv_bytes_per_token_layer
                + mean_context * m.indexer_bytes_per_token_layer
            )
        )
        memory_s = (weight_bytes + kv_read) / self.node.hbm_bytes_per_s
        flops = 2.0 * m.active_params * batch_size / m.gemm_speedup + (
            batch_size
            * m.layers
            * (
                m.attn_flops_per_pair_layer * m.attended(mean_context)
                + m.indexer_flops_per_pair_layer * mean_context
            )
        )
        compute_s = flops / self.node.flops
        return self.node.step_overhead_s + max(memory_s, compute_s)
