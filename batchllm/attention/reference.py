"""PyTorch reference attention over a paged KV cache: the oracle for every Triton kernel."""

from __future__ import annotations

import torch

from batchllm.attention.metadata import AttentionMetadata
from batchllm.kv_cache.fp8 import dequantize_kv, from_storage, is_fp8, kv_scale, storage_view


def gather_kv(cache: torch.Tensor, block_table: torch.Tensor, seq_len: int) -> torch.Tensor:
    """The first seq_len cached tokens of one sequence, [seq_len, Hkv, D], in the cache's dtype."""
    block_size = cache.shape[1]
    num_blocks = (seq_len + block_size - 1) // block_size
    blocks = storage_view(cache)[block_table[:num_blocks].long()]  # raw bytes for FP8 (see storage_view)
    return from_storage(blocks, cache.dtype).flatten(0, 1)[:seq_len]


def gather_kv_float(cache: torch.Tensor, block_table: torch.Tensor, seq_len: int) -> torch.Tensor:
    """`gather_kv` as float32 values: an FP8 cache is dequantized with its per-head scales."""
    kv = gather_kv(cache, block_table, seq_len)
    return dequantize_kv(kv, kv_scale(cache)) if is_fp8(cache.dtype) else kv.float()


def paged_attention_reference(
    query: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    meta: AttentionMetadata,
    scale: float,
) -> torch.Tensor:
    """Causal attention of each sequence's query tokens ([T, Hq, D]) over its cached context.

    The KV of the new tokens must already be in the cache; an FP8 cache is dequantized (fp32) first. Query token j of a sequence with
    q_len queries and seq_len context sits at position seq_len - q_len + j and sees positions <= it.
    """
    num_q_heads = query.shape[1]
    num_kv_heads = k_cache.shape[2]
    group = num_q_heads // num_kv_heads
    out = torch.empty_like(query)
    for i in range(meta.num_seqs):
        start, end = meta.query_start_loc_cpu[i], meta.query_start_loc_cpu[i + 1]
        seq_len = meta.seq_lens_cpu[i]
        q_len = end - start
        q = query[start:end].transpose(0, 1).float()  # [Hq, q_len, D]
        k = gather_kv_float(k_cache, meta.block_tables[i], seq_len).transpose(0, 1)  # [Hkv, S, D]
        v = gather_kv_float(v_cache, meta.block_tables[i], seq_len).transpose(0, 1)
        k = k.repeat_interleave(group, dim=0)
        v = v.repeat_interleave(group, dim=0)
        scores = torch.matmul(q, k.transpose(1, 2)) * scale  # [Hq, q_len, S]
        q_pos = torch.arange(seq_len - q_len, seq_len, device=query.device)
        k_pos = torch.arange(seq_len, device=query.device)
        scores.masked_fill_(k_pos[None, :] > q_pos[:, None], float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        out[start:end] = torch.matmul(probs, v).transpose(0, 1).to(query.dtype)
    return out
