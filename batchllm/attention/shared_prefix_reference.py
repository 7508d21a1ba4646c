"""PyTorch reference of prefix-shared ("cascade") attention: the oracle of the fused Triton kernel.

The computation the fused Triton kernel must match, done the simple way (fp32; an FP8 cache is
dequantized with its scales first):

1. every segment s: the stacked queries of all its members (query tokens [seg_q_start, seg_q_end),
   all heads) attend the segment's KV [seg_kv_start, seg_kv_end) of seg_block_tables[s] with no
   mask -> one partial (O, LSE) per covered token, in slot seg_level[s];
2. every sequence b: its query tokens attend its own KV [distinct_kv_start[b], seq_len) causally
   -> one more partial (O, LSE);
3. exact merge: O = sum_i exp(L_i - L) O_i with L = log sum_i exp(L_i); a level that does not cover
   a token has L_i = -inf there (weight 0).

With consistent metadata (a member's segments tile [0, distinct_kv_start) and it owns the same KV
there) this equals `paged_attention_reference`, which ignores `meta.shared`.
"""

from __future__ import annotations

import torch

from batchllm.attention.metadata import AttentionMetadata
from batchllm.attention.reference import gather_kv_float


def attend_with_lse(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention returning (O [n, Hq, D], natural-log LSE [n, Hq]) in fp32.

    q [n, Hq, D]; k, v [L, Hkv, D] (GQA: query head h uses KV head h // G); mask [n, L] bool (True = seen).
    A row that sees nothing gets O = 0, LSE = -inf (zero weight in a merge).
    """
    group = q.shape[1] // k.shape[1]
    qf = q.transpose(0, 1).float()  # [Hq, n, D]
    kf = k.transpose(0, 1).float().repeat_interleave(group, dim=0)  # [Hq, L, D]
    vf = v.transpose(0, 1).float().repeat_interleave(group, dim=0)
    scores = torch.matmul(qf, kf.transpose(1, 2)) * scale  # [Hq, n, L]
    if mask is not None:
        scores = scores.masked_fill(~mask[None], float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)  # [Hq, n]
    probs = torch.exp(scores - torch.where(torch.isinf(lse), 0.0, lse)[..., None])
    out = torch.matmul(probs, vf)  # rows with lse = -inf have probs 0 -> O = 0
    return out.transpose(0, 1), lse.transpose(0, 1)


def merge_partials(outs: torch.Tensor, lses: torch.Tensor) -> torch.Tensor:
    """Exact merge of partial attention results: outs [P, T, Hq, D], lses [P, T, Hq] (natural log)."""
    lse = torch.logsumexp(lses, dim=0)  # [T, Hq]
    weights = torch.exp(lses - lse[None])  # [P, T, Hq]; 0 for -inf partials
    return (weights[..., None] * outs).sum(dim=0)


def _gather_range(cache: torch.Tensor, block_table: torch.Tensor, start: int, end: int) -> torch.Tensor:
    """KV positions [start, end) of a block list as float32 (an FP8 cache dequantized)."""
    return gather_kv_float(cache, block_table, end)[start:end]


def shared_prefix_attention_reference(
    query: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    meta: AttentionMetadata,
    scale: float,
    return_partials: bool = False,
):
    """Cascade attention (shared segments + distinct parts + merge) of query [T, Hq, D]; see module doc.

    Returns O [T, Hq, D] in the query dtype, or with return_partials also (outs [L+1, T, Hq, D],
    lses [L+1, T, Hq]) in fp32, slot l < L = level l, slot L = the distinct parts.
    """
    shared = meta.shared
    if shared is None:
        raise ValueError("meta.shared is None: nothing to share (use paged_attention_reference)")
    num_tokens, num_q_heads, head_dim = query.shape
    num_parts = shared.num_levels + 1
    outs = torch.zeros(num_parts, num_tokens, num_q_heads, head_dim, dtype=torch.float32, device=query.device)
    lses = torch.full((num_parts, num_tokens, num_q_heads), float("-inf"), dtype=torch.float32, device=query.device)

    for s in range(shared.num_segments):
        qs, qe = shared.seg_q_start_cpu[s], shared.seg_q_end_cpu[s]
        ks, ke, level = shared.seg_kv_start_cpu[s], shared.seg_kv_end_cpu[s], shared.seg_level_cpu[s]
        if qe <= qs:
            continue
        if not torch.isinf(lses[level, qs:qe]).all():
            raise ValueError(f"segment {s} overlaps another segment of level {level}")
        k = _gather_range(k_cache, shared.seg_block_tables[s], ks, ke)
        v = _gather_range(v_cache, shared.seg_block_tables[s], ks, ke)
        outs[level, qs:qe], lses[level, qs:qe] = attend_with_lse(query[qs:qe], k, v, scale)

    for b in range(meta.num_seqs):
        start, end = meta.query_start_loc_cpu[b], meta.query_start_loc_cpu[b + 1]
        seq_len, kv_start = meta.seq_lens_cpu[b], shared.distinct_kv_start_cpu[b]
        if end == start:
            continue
        k = _gather_range(k_cache, meta.block_tables[b], kv_start, seq_len)
        v = _gather_range(v_cache, meta.block_tables[b], kv_start, seq_len)
        q_pos = torch.arange(seq_len - (end - start), seq_len, device=query.device)
        k_pos = torch.arange(kv_start, seq_len, device=query.device)
        mask = k_pos[None, :] <= q_pos[:, None]
        outs[-1, start:end], lses[-1, start:end] = attend_with_lse(query[start:end], k, v, scale, mask)

    out = merge_partials(outs, lses).to(query.dtype)
    return (out, outs, lses) if return_partials else out
