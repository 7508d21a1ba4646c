"""Engine-start warm-up of the fused prefix-shared kernel: launch every compiled variant once.

Each distinct constexpr set of a Triton kernel is a JIT compile of seconds; paid in the middle of a
run, it stalls the batch that first needs it. The variants the fused kernel can select depend on
which regions meet in a batch (shared tiles of either height, decode and/or extend tiles) and on the
tile config, so engine start launches one tiny synthetic batch of each kind.
"""

from __future__ import annotations

from typing import Optional

import torch

from batchllm.attention.metadata import AttentionMetadata, Segment, build_shared_prefix_metadata
from batchllm.attention.triton.shared_prefix import shared_prefix_attention_triton
from batchllm.attention.triton.shared_prefix_plan import shared_prefix_config
from batchllm.attention.triton.utils import cdiv, next_pow2
from batchllm.kv_cache.fp8 import is_fp8


def warmup_batch(
    q_lens: tuple[int, ...], num_q_heads: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype,
    device: torch.device, block_size: int, kv_dtype: Optional[torch.dtype] = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, AttentionMetadata]:  # fmt: skip
    """(query, k_cache, v_cache, meta) of one prefix group: a shared prefix of two blocks, then one
    member per entry of `q_lens` with q_len + 1 own tokens (its queries the last q_len of them).
    Block 0 is the block-table padding and owned by nobody; the KV values are zeros, in `kv_dtype`
    (default `dtype`; an FP8 cache gets scale 1.0)."""
    prefix_len = 2 * block_size
    prefix_blocks = [1, 2]
    tables, seq_lens, slots, qsl = [], [], [], [0]
    next_block = 3
    for q in q_lens:
        own = cdiv(q + 1, block_size)
        table = prefix_blocks + list(range(next_block, next_block + own))
        next_block += own
        seq_len = prefix_len + q + 1
        tables.append(table)
        seq_lens.append(seq_len)
        slots += [table[p // block_size] * block_size + p % block_size for p in range(seq_len - q, seq_len)]
        qsl.append(qsl[-1] + q)
    block_tables = torch.zeros(len(tables), max(len(t) for t in tables), dtype=torch.int32)
    for b, table in enumerate(tables):
        block_tables[b, : len(table)] = torch.tensor(table, dtype=torch.int32)
    segment = Segment(0, qsl[-1], 0, prefix_len, 0, prefix_blocks)
    meta = AttentionMetadata(
        query_start_loc=torch.tensor(qsl, dtype=torch.int32, device=device),
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=device),
        block_tables=block_tables.to(device),
        slot_mapping=torch.tensor(slots, dtype=torch.int64, device=device),
        max_query_len=max(q_lens),
        max_seq_len=max(seq_lens),
        query_start_loc_cpu=qsl,
        seq_lens_cpu=seq_lens,
        shared=build_shared_prefix_metadata([segment], [prefix_len] * len(q_lens), device),
    )
    cache_shape = (next_block, block_size, num_kv_heads, head_dim)
    k_cache = torch.zeros(cache_shape, dtype=kv_dtype or dtype, device=device)
    v_cache = torch.zeros(cache_shape, dtype=kv_dtype or dtype, device=device)
    query = torch.zeros(qsl[-1], num_q_heads, head_dim, dtype=dtype, device=device)
    return query, k_cache, v_cache, meta


def precompile_shared_prefix_kernels(
    num_q_heads: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype, device: torch.device, block_size: int,
    kv_dtype: Optional[torch.dtype] = None,
) -> int:  # fmt: skip
    """Launch every variant of the fused kernel an engine can hit (decode and prefill-heavy tile configs x
    2 shared tile heights x decode-only / extend-only / mixed regions) once on tiny batches, so that no
    batch shape pays a Triton JIT compile (seconds each) in the middle of a run. `kv_dtype`: the cache's
    element type (an FP8 cache selects variants of its own). Returns the number of launches."""
    group = num_q_heads // num_kv_heads
    small_members = 2  # rows = 2 * G: the small tile height
    large_members = max(16, next_pow2(group)) // group + 1  # just over it: the large tile height
    kv_fp8 = kv_dtype is not None and is_fp8(kv_dtype)
    decode_cfg = shared_prefix_config(num_q_heads, num_kv_heads, head_dim, dtype, kv_fp8=kv_fp8)
    prefill_cfg = shared_prefix_config(num_q_heads, num_kv_heads, head_dim, dtype, prefill_heavy=True)
    launches = 0
    for cfg in dict.fromkeys((decode_cfg, prefill_cfg)):
        for members in (small_members, large_members):
            for q_lens in ((1,) * members, (2,) * members, (1,) * (members - 1) + (2,)):
                if cfg != decode_cfg and max(q_lens) == 1:  # a decode-only batch is never prefill-heavy
                    continue
                query, k_cache, v_cache, meta = warmup_batch(
                    q_lens, num_q_heads, num_kv_heads, head_dim, dtype, device, block_size, kv_dtype
                )
                shared_prefix_attention_triton(query, k_cache, v_cache, meta, head_dim**-0.5, config=cfg)
                launches += 1
    return launches
