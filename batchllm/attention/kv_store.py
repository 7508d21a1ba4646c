"""Storing an iteration's keys and values into the paged KV cache (every backend does this first)."""

from __future__ import annotations

import torch

from batchllm.kv_cache.fp8 import is_fp8, kv_scale, quantize_kv, storage_view


def write_kv_cache(
    key: torch.Tensor, value: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, slot_mapping: torch.Tensor
) -> None:
    """Store this iteration's keys/values ([T, Hkv, D]) into their cache slots (index_put: one small
    launch per cache; the attention kernels dominate). An FP8 cache stores them quantized with its
    per-head scales (divided, clamped to +-448, rounded: see kv_cache/fp8.py)."""
    num_blocks, block_size, num_kv_heads, head_dim = k_cache.shape
    if is_fp8(k_cache.dtype):
        key = quantize_kv(key, kv_scale(k_cache))
        value = quantize_kv(value, kv_scale(v_cache))
    # Raw bytes for FP8: index_put does not cover the float8 types on every device.
    storage_view(k_cache).view(num_blocks * block_size, num_kv_heads, head_dim)[slot_mapping] = storage_view(key)
    storage_view(v_cache).view(num_blocks * block_size, num_kv_heads, head_dim)[slot_mapping] = storage_view(value)
