"""Attention backend interface: the model calls one object, the runner picks the implementation."""

from __future__ import annotations

from typing import Protocol

import torch

from batchllm.attention.metadata import AttentionMetadata
from batchllm.attention.reference import paged_attention_reference, write_kv_cache


class AttentionBackend(Protocol):
    name: str

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
        """Write this iteration's key/value ([T, Hkv, D]) to the cache, then attend query [T, Hq, D]."""
        ...

    def precompile(
        self, num_q_heads: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype, device: torch.device,
        block_size: int,
    ) -> None:  # fmt: skip
        """Compile (JIT) every kernel variant a run can need, at engine start rather than mid-run."""
        ...


class ReferenceBackend:
    """Per-sequence PyTorch attention on gathered paged KV: slow, simple, the oracle."""

    name = "reference"

    def forward(self, query, key, value, k_cache, v_cache, meta, scale):
        write_kv_cache(key, value, k_cache, v_cache, meta.slot_mapping)
        return paged_attention_reference(query, k_cache, v_cache, meta, scale)

    def precompile(self, num_q_heads, num_kv_heads, head_dim, dtype, device, block_size) -> None:
        pass  # plain PyTorch: nothing to compile


def get_attention_backend(name: str) -> AttentionBackend:
    if name == "reference":
        return ReferenceBackend()
    if name == "triton":
        from batchllm.attention.triton_backend import TritonBackend

        return TritonBackend()
    if name == "triton-unfused":  # ablation: no prefix-shared kernel
        from batchllm.attention.triton_backend import TritonBackend

        return TritonBackend(use_shared_prefix_kernel=False)
    raise ValueError(f"attention backend {name!r} is unknown; use 'reference', 'triton' or 'triton-unfused'")
