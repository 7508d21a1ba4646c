"""Storing an iteration's keys and values into the paged KV cache (every backend does this first)."""

from __future__ import annotations

import torch


def write_kv_cache(
    key: torch.Tensor, value: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, slot_mapping: torch.Tensor
) -> None:
    """Store this iteration's keys/values ([T, Hkv, D]) into their cache slots (index_put: one small
    launch per cache; the attention kernels dominate)."""
    num_blocks, block_size, num_kv_heads, head_dim = k_cache.shape
    k_cache.view(num_blocks * block_size, num_kv_heads, head_dim)[slot_mapping] = key
    v_cache.view(num_blocks * block_size, num_kv_heads, head_dim)[slot_mapping] = value
