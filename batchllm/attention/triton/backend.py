"""Triton attention backend: KV store, then the prefix-shared fused kernel or plain paged attention."""

from __future__ import annotations

import torch

from batchllm.attention.kv_store import write_kv_cache
from batchllm.attention.metadata import AttentionMetadata
from batchllm.attention.triton import paged, shared_prefix_kernels
from batchllm.attention.triton.graph_plan import DecodeGraphPlanner
from batchllm.attention.triton.kv_write import store_kv_fp8
from batchllm.attention.triton.paged import paged_attention_triton
from batchllm.attention.triton.shared_prefix import shared_prefix_attention_triton
from batchllm.attention.triton.warmup import precompile_shared_prefix_kernels
from batchllm.kv_cache.fp8 import is_fp8


class TritonBackend:
    """use_shared_prefix_kernel=False ignores `meta.shared` (every sequence reads its whole context
    through the paged kernel): the ablation baseline, registered as backend "triton-unfused".
    cascade=True runs the shared kernel as separate shared / distinct / merge launches."""

    supports_cuda_graphs = True
    supports_fp8_kv = True  # float8_e4m3fn caches are read as FP8 and widened in registers (sm_89+ on a GPU)

    def __init__(self, use_shared_prefix_kernel: bool = True, cascade: bool = False) -> None:
        self.cascade = cascade
        self.supports_shared_prefix = use_shared_prefix_kernel
        self.name = "triton" if use_shared_prefix_kernel else "triton-unfused"

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        meta: AttentionMetadata,
        scale: float,
    ) -> torch.Tensor:
        if is_fp8(k_cache.dtype):
            store_kv_fp8(key, value, k_cache, v_cache, meta.slot_mapping)  # one launch instead of ten
        else:
            write_kv_cache(key, value, k_cache, v_cache, meta.slot_mapping)
        if self.supports_shared_prefix and meta.shared is not None:
            return shared_prefix_attention_triton(query, k_cache, v_cache, meta, scale, cascade=self.cascade)
        return paged_attention_triton(query, k_cache, v_cache, meta, scale)

    def precompile(self, num_q_heads, num_kv_heads, head_dim, dtype, device, block_size, kv_dtype=None) -> None:
        # The plain paged kernels are compiled by the runner's profile run (prefill) and CUDA-graph
        # capture (decode); the fused kernel's variants depend on which groups meet in a batch.
        if self.supports_shared_prefix:
            precompile_shared_prefix_kernels(
                num_q_heads, num_kv_heads, head_dim, dtype, device, block_size, kv_dtype=kv_dtype
            )

    def init_capture_graph(
        self, max_batch, max_levels, num_q_heads, num_kv_heads, head_dim, dtype, device, kv_dtype=None
    ) -> DecodeGraphPlanner:
        # Plain decode graphs replay the paged kernel and need no plan; shared-segment graphs the fused one.
        kv_fp8 = kv_dtype is not None and is_fp8(kv_dtype)
        return DecodeGraphPlanner(max_batch, max_levels, num_q_heads, num_kv_heads, head_dim, dtype, device, kv_fp8)


def compiled_kernel_variants() -> int:
    """Compiled variants of the attention kernels so far in this process (0 in the interpreter): a
    growing count during a timed run means Triton JIT-compiled there."""
    kernels = (paged._paged_attn_kernel, paged._merge_splits_kernel,
               shared_prefix_kernels._shared_prefix_kernel, shared_prefix_kernels._merge_kernel)  # fmt: skip
    return sum(len(caches[0]) for k in kernels for caches in getattr(k, "device_caches", {}).values())
