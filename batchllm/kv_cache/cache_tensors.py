"""The per-layer KV tensors and how many blocks fit in the memory we may use.

`dtype` here is the cache's element type: the model dtype, or float8_e4m3fn for an FP8 cache (one byte an
element, so twice the blocks in the same memory; its scales are in fp8.py).
"""

from __future__ import annotations

from typing import Optional, Protocol

import torch

from batchllm.config import CacheConfig
from batchllm.kv_cache.fp8 import CheckpointKVScales, attach_layer_scales, is_fp8


class KVShape(Protocol):
    """The numbers the KV tensors' shape depends on (the model's architecture config has these fields)."""

    num_layers: int
    num_kv_heads: int
    head_dim: int


def kv_bytes_per_block(arch: KVShape, block_size: int, dtype: torch.dtype) -> int:
    """K and V of every layer for `block_size` tokens."""
    return 2 * arch.num_layers * arch.num_kv_heads * arch.head_dim * (torch.finfo(dtype).bits // 8) * block_size


def num_blocks_for_budget(budget_bytes: int, arch: KVShape, cache: CacheConfig, dtype: torch.dtype) -> int:
    return max(0, budget_bytes // kv_bytes_per_block(arch, cache.block_size, dtype))


def gpu_kv_budget_bytes(device: torch.device, utilization: float, is_share: bool = False) -> int:
    """What is left for KV of `utilization` x total memory, after weights and the profiled activation peak
    (and, unless `utilization` is this process's share of a shared GPU, what other processes hold)."""
    free, total = torch.cuda.mem_get_info(device)
    used_by_us = torch.cuda.max_memory_allocated(device)
    used_by_others = 0 if is_share else max(0, total - free - torch.cuda.memory_reserved(device))
    return int(total * utilization) - used_by_us - used_by_others


def allocate_kv_cache(
    arch: KVShape, num_blocks: int, block_size: int, dtype: torch.dtype, device: torch.device,
    scales: Optional[CheckpointKVScales] = None,
) -> list[tuple[torch.Tensor, torch.Tensor]]:  # fmt: skip
    """(K, V) of every layer, zeroed; an FP8 cache gets each layer's scales (`scales`, else 1.0)."""
    shape = (num_blocks, block_size, arch.num_kv_heads, arch.head_dim)
    caches = [
        (torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device))
        for _ in range(arch.num_layers)
    ]
    if is_fp8(dtype):
        attach_layer_scales(caches, scales)
    return caches


def allocate_host_kv_cache(
    arch: KVShape, num_blocks: int, block_size: int, dtype: torch.dtype, device: torch.device
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Host-side blocks for swapped-out KV: pinned when the cache is on a GPU (fast async copies back)."""
    shape = (num_blocks, block_size, arch.num_kv_heads, arch.head_dim)
    pin = device.type == "cuda"
    return [
        (torch.empty(shape, dtype=dtype, pin_memory=pin), torch.empty(shape, dtype=dtype, pin_memory=pin))
        for _ in range(arch.num_layers)
    ]
