"""Triton attention over the paged KV cache: one entry point for decode, extend and prefill.

Work decomposition (one program = one "query tile" x one KV head x one KV split):

* Rows of a tile are (query token, query head of the KV head's group) pairs, token-major:
  row r -> token r // G, head r % G. So all G query heads that share a KV head are stacked into
  the M dimension of tl.dot and every KV tile is loaded once per KV head, not once per query head.
  Decode tiles hold one token (M = G padded to 16); prefill/extend tiles hold BLOCK_M // G tokens.
* KV is walked in tiles of BLOCK_N tokens; each token's page comes from the block table, so a
  tile may span several (non-contiguous) pages. Tiles entirely left of the tile's first query
  position run without a mask; only the tiles on the causal diagonal are masked, and tiles right
  of the last query are never visited.
* Split-K (flash-decoding): the KV tiles of a query tile are divided into NUM_SPLITS ranges on the
  device (from the actual seq_len, so a fixed split count is CUDA-graph safe); every split writes
  its normalised partial output plus its log-sum-exp, and `_merge_splits_kernel` combines them
  exactly. The same (O, LSE) outputs are what a later shared-prefix (cascade) kernel merges.

Online softmax runs in fp32 in the log2 domain (exp2 with scale * log2(e) folded into scores).
An FP8 cache is read as FP8 and widened in registers, its scales applied in the KV loop (kv_loop.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from batchllm.attention.metadata import AttentionMetadata
from batchllm.attention.triton.kv_loop import attend_kv_range
from batchllm.attention.triton.query_tile import load_query_rows, seq_query_tile
from batchllm.attention.triton.utils import (
    LOG2E,
    cdiv,
    check_inputs,
    dot_precision,
    is_interpreter,
    kv_scale_args,
    next_pow2,
    num_leading_decodes,
    num_sms,
    upcast_dot,
)


@dataclass(frozen=True)
class TileConfig:
    """Launch shape of one attention launch. block_m rows = block_q tokens x G heads (+ padding)."""

    block_m: int
    block_q: int
    block_n: int
    num_warps: int
    num_stages: int


# --------------------------------------------------------------------------------------------
# Device code
# --------------------------------------------------------------------------------------------


# Block-table widths follow the batch: unspecialised, so divisibility by 16 does not pick a new variant.
@triton.jit(do_not_specialize=["seq_begin", "seq_end", "stride_bt"])
def _paged_attn_kernel(
    q_ptr,
    k_cache,
    v_cache,
    k_scale_ptr,
    v_scale_ptr,
    out_ptr,
    part_out_ptr,
    part_lse_ptr,
    qsl_ptr,
    seq_lens_ptr,
    bt_ptr,
    stride_qt,
    stride_qh,
    stride_ot,
    stride_oh,
    stride_kb,
    stride_kt,
    stride_kh,
    stride_vb,
    stride_vt,
    stride_vh,
    stride_bt,
    stride_pt,
    stride_ph,
    stride_ps,
    stride_lt,
    stride_lh,
    seq_begin,
    seq_end,
    qk_scale,
    G: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    BLOCK_N: tl.constexpr,
    PAGE: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    D_PAD: tl.constexpr,
    NUM_SPLITS: tl.constexpr,
    IS_DECODE: tl.constexpr,
    KV_FP8: tl.constexpr,
    UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
    INTERPRET: tl.constexpr,
):
    pid_q = tl.program_id(0)
    kvh = tl.program_id(1)
    split = tl.program_id(2)

    seq, q_start, q_len, tok0 = seq_query_tile(qsl_ptr, seq_begin, seq_end, pid_q, BLOCK_Q, IS_DECODE)
    if tok0 >= q_len:
        return
    seq_len = tl.load(seq_lens_ptr + seq)
    ctx_start = seq_len - q_len  # position of the sequence's first query token
    q, row_tok, head, row_ok, t_idx = load_query_rows(
        q_ptr, q_start, tok0, q_len, kvh, stride_qt, stride_qh, G, BLOCK_M, BLOCK_Q, HEAD_DIM, D_PAD
    )
    q_pos = ctx_start + row_tok

    # KV tiles this query tile needs, and the prefix of them that no row masks.
    kv_end = ctx_start + tl.minimum(q_len, tok0 + BLOCK_Q)
    n_tiles = tl.cdiv(kv_end, BLOCK_N)
    n_full = (ctx_start + tok0 + 1) // BLOCK_N
    if NUM_SPLITS > 1:
        per_split = tl.cdiv(n_tiles, NUM_SPLITS)
        lo = split * per_split
        hi = tl.minimum(lo + per_split, n_tiles)
    else:
        lo = 0
        hi = n_tiles

    bt_row = bt_ptr + seq.to(tl.int64) * stride_bt
    acc, m_i, l_i = attend_kv_range(
        q, q_pos, 0, seq_len, lo, hi, n_full, k_cache, v_cache, k_scale_ptr, v_scale_ptr, bt_row, kvh,
        stride_kb, stride_kt, stride_kh, stride_vb, stride_vt, stride_vh, qk_scale,
        PAGE, BLOCK_N, HEAD_DIM, D_PAD, True, KV_FP8, UPCAST, PRECISION, INTERPRET,
    )  # fmt: skip

    offs_d = tl.arange(0, D_PAD)
    store_mask = row_ok[:, None] & (offs_d < HEAD_DIM)[None, :]
    if NUM_SPLITS == 1:
        o = acc / l_i[:, None]
        o_ptrs = out_ptr + (t_idx * stride_ot + head * stride_oh)[:, None] + offs_d[None, :]
        tl.store(o_ptrs, o.to(out_ptr.dtype.element_ty), mask=store_mask)
    else:
        # An empty split (l == 0) stores O = 0, LSE = -inf: zero weight in the merge.
        has = l_i > 0.0
        o = acc / tl.where(has, l_i, 1.0)[:, None]
        lse = tl.where(has, m_i + tl.log2(tl.where(has, l_i, 1.0)), float("-inf"))
        p_row = t_idx * stride_pt + head * stride_ph + split * stride_ps
        tl.store(part_out_ptr + p_row[:, None] + offs_d[None, :], o, mask=store_mask)
        tl.store(part_lse_ptr + t_idx * stride_lt + head * stride_lh + split, lse, mask=row_ok)


@triton.jit
def _merge_splits_kernel(
    part_out_ptr,
    part_lse_ptr,
    out_ptr,
    stride_pt,
    stride_ph,
    stride_ps,
    stride_lt,
    stride_lh,
    stride_ot,
    stride_oh,
    NUM_SPLITS: tl.constexpr,
    S_PAD: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    D_PAD: tl.constexpr,
):
    """out[t, h] = sum_s 2^(lse_s - L) O_s with L = log2 sum_s 2^lse_s (exact split-K merge)."""
    t = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1)
    offs_s = tl.arange(0, S_PAD)
    offs_d = tl.arange(0, D_PAD)
    s_ok = offs_s < NUM_SPLITS
    lse = tl.load(part_lse_ptr + t * stride_lt + h * stride_lh + offs_s, mask=s_ok, other=float("-inf"))
    w = tl.exp2(lse - tl.max(lse, 0))
    w = w / tl.sum(w, 0)
    o_ptrs = part_out_ptr + t * stride_pt + h * stride_ph + offs_s[:, None] * stride_ps + offs_d[None, :]
    o = tl.load(o_ptrs, mask=s_ok[:, None] & (offs_d < HEAD_DIM)[None, :], other=0.0)
    res = tl.sum(o * w[:, None], 0)
    tl.store(out_ptr + t * stride_ot + h * stride_oh + offs_d, res.to(out_ptr.dtype.element_ty), mask=offs_d < HEAD_DIM)


# --------------------------------------------------------------------------------------------
# Host code
# --------------------------------------------------------------------------------------------


def decode_config(num_q_heads: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype) -> TileConfig:
    """One query token per tile; M = the GQA group padded to 16 (tl.dot's minimum)."""
    group = num_q_heads // num_kv_heads
    block_m = max(16, next_pow2(group))
    if dtype == torch.float32:
        return TileConfig(block_m, 1, 32, 4, 2)
    block_n = 64 if head_dim <= 128 else 32
    return TileConfig(block_m, 1, block_n, 4, 3)


def prefill_config(num_q_heads: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype) -> TileConfig:
    """Tiles of BLOCK_M rows = BLOCK_M // G query tokens x G heads (Hopper: 128 x 64, 8 warps)."""
    group = num_q_heads // num_kv_heads
    if dtype == torch.float32:
        block_m, block_n, warps, stages = 64, 32, 4, 1
    elif head_dim <= 128:
        block_m, block_n, warps, stages = 128, 64, 8, 2
    else:
        block_m, block_n, warps, stages = 64, 32, 4, 2
    block_m = max(block_m, next_pow2(group))
    return TileConfig(block_m, block_m // group, block_n, warps, stages)


def choose_num_splits(num_seqs: int, num_kv_heads: int, max_seq_len: int, block_n: int, device: torch.device) -> int:
    """Split-K factor for a pure-decode batch: enough programs to fill the GPU, >= 4 KV tiles each.

    Large batches already give B * Hkv programs >> SMs and need no split (and no merge pass).
    """
    programs = max(1, num_seqs * num_kv_heads)
    target = 4 * num_sms(device)
    if programs >= target:
        return 1
    max_useful = max(1, cdiv(max_seq_len, block_n) // 4)
    return min(next_pow2(cdiv(target, programs)), next_pow2(max_useful), 64)


def _launch(
    query: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    out: torch.Tensor,
    meta: AttentionMetadata,
    qk_scale: float,
    seq_begin: int,
    seq_end: int,
    num_tokens: int,
    cfg: TileConfig,
    is_decode: bool,
    num_splits: int,
) -> None:
    num_q_heads, head_dim = query.shape[1], query.shape[2]
    num_kv_heads = k_cache.shape[2]
    group = num_q_heads // num_kv_heads
    num_seqs = seq_end - seq_begin
    if is_decode:
        grid0 = num_seqs
    else:
        grid0 = num_tokens // cfg.block_q + num_seqs
    if num_splits > 1:
        total_t = query.shape[0]
        part_out = torch.empty(total_t, num_q_heads, num_splits, head_dim, dtype=torch.float32, device=query.device)
        part_lse = torch.empty(total_t, num_q_heads, num_splits, dtype=torch.float32, device=query.device)
    else:
        part_out = part_lse = out  # unused by the kernel (NUM_SPLITS == 1 branch is compiled out)
    d_pad = max(16, next_pow2(head_dim))
    k_scale, v_scale, kv_fp8 = kv_scale_args(query, k_cache, v_cache)
    _paged_attn_kernel[(grid0, num_kv_heads, num_splits)](
        query, k_cache, v_cache, k_scale, v_scale, out, part_out, part_lse,
        meta.query_start_loc, meta.seq_lens, meta.block_tables,
        query.stride(0), query.stride(1), out.stride(0), out.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        meta.block_tables.stride(0),
        part_out.stride(0), part_out.stride(1), part_out.stride(2) if num_splits > 1 else 0,
        part_lse.stride(0), part_lse.stride(1),
        seq_begin, seq_end, qk_scale,
        G=group, BLOCK_M=cfg.block_m, BLOCK_Q=cfg.block_q, BLOCK_N=cfg.block_n,
        PAGE=k_cache.shape[1], HEAD_DIM=head_dim, D_PAD=d_pad,
        NUM_SPLITS=num_splits, IS_DECODE=is_decode, KV_FP8=kv_fp8,
        UPCAST=upcast_dot(query.dtype), PRECISION=dot_precision(query.dtype), INTERPRET=is_interpreter(),
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )  # fmt: skip
    if num_splits > 1:
        _merge_splits_kernel[(query.shape[0], num_q_heads)](
            part_out, part_lse, out,
            part_out.stride(0), part_out.stride(1), part_out.stride(2),
            part_lse.stride(0), part_lse.stride(1),
            out.stride(0), out.stride(1),
            NUM_SPLITS=num_splits, S_PAD=next_pow2(num_splits), HEAD_DIM=head_dim, D_PAD=d_pad,
            num_warps=4,
        )  # fmt: skip


def paged_attention_triton(
    query: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    meta: AttentionMetadata,
    scale: float,
    out: torch.Tensor | None = None,
    *,
    num_splits: int | None = None,
    decode_cfg: TileConfig | None = None,
    prefill_cfg: TileConfig | None = None,
) -> torch.Tensor:
    """Causal attention of query [T, Hq, D] over the paged cache; same contract as
    `paged_attention_reference` (new tokens' KV already written; the caches in the query's dtype or
    float8_e4m3fn with scales, see kv_cache/fp8.py). Returns `out`.

    Pure-decode batches (max_query_len == 1) use one decode launch, split-K when the batch is too
    small to fill the GPU (`num_splits` pins the factor, e.g. per CUDA-graph bucket; None = auto).
    Mixed batches use a decode launch for the leading q_len == 1 sequences and a prefill/extend
    launch for the rest (any q_len, decodes included), so decodes do not waste 128-row tiles.
    """
    if out is None:
        out = torch.empty_like(query)
    check_inputs(query, k_cache, v_cache, out)
    num_seqs = meta.num_seqs
    num_tokens = query.shape[0]
    if num_seqs == 0 or num_tokens == 0:
        return out
    num_q_heads, num_kv_heads, head_dim = query.shape[1], k_cache.shape[2], query.shape[2]
    qk_scale = float(scale) * LOG2E
    dcfg = decode_cfg or decode_config(num_q_heads, num_kv_heads, head_dim, query.dtype)

    if meta.max_query_len <= 1:
        if num_splits is None:
            num_splits = choose_num_splits(num_seqs, num_kv_heads, meta.max_seq_len, dcfg.block_n, query.device)
        _launch(query, k_cache, v_cache, out, meta, qk_scale, 0, num_seqs, num_tokens, dcfg, True, num_splits)
        return out

    num_decodes = num_leading_decodes(meta.query_start_loc_cpu)
    if num_decodes > 0:
        _launch(query, k_cache, v_cache, out, meta, qk_scale, 0, num_decodes, num_decodes, dcfg, True, 1)
    pcfg = prefill_cfg or prefill_config(num_q_heads, num_kv_heads, head_dim, query.dtype)
    rest_tokens = num_tokens - meta.query_start_loc_cpu[num_decodes]
    _launch(query, k_cache, v_cache, out, meta, qk_scale, num_decodes, num_seqs, rest_tokens, pcfg, False, 1)
    return out
