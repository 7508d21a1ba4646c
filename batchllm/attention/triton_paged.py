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
  an unnormalised-free partial output plus its log-sum-exp, and `_merge_splits_kernel` combines
  them exactly. The same (O, LSE) outputs are what a later shared-prefix (cascade) kernel merges.

Online softmax runs in fp32 in the log2 domain (exp2 with scale * log2(e) folded into scores).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import triton
import triton.language as tl

from batchllm.attention.metadata import AttentionMetadata
from batchllm.attention.triton_utils import (
    cdiv,
    dot_acc,
    dot_precision,
    is_interpreter,
    next_pow2,
    num_sms,
    upcast_dot,
)

LOG2E = 1.4426950408889634
# Finite "minus infinity" for the running max: an all-masked row then gives exp2(-inf - m) = 0 and
# alpha = exp2(0) = 1 instead of NaN from (-inf) - (-inf).
_NEG_BIG = -1.0e30


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


@triton.jit
def _attend_kv_tiles(
    acc,
    m_i,
    l_i,
    q,
    q_pos,
    k_cache,
    v_cache,
    bt_row,
    kv_head_off_k,
    kv_head_off_v,
    stride_kb,
    stride_kt,
    stride_vb,
    stride_vt,
    seq_len,
    tile_lo,
    tile_hi,
    qk_scale,
    PAGE: tl.constexpr,
    BLOCK_N: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    D_PAD: tl.constexpr,
    CAUSAL: tl.constexpr,
    UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """Online-softmax accumulation of KV tiles [tile_lo, tile_hi) of one sequence.

    CAUSAL=False is only used for tiles every row fully sees (all tokens < seq_len and <= q_pos),
    so those tiles need neither bounds nor causal masks.
    """
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D_PAD)
    d_ok = offs_d < HEAD_DIM
    for j in range(tile_lo, tile_hi):
        tok = j * BLOCK_N + offs_n
        if CAUSAL:
            tok_ok = tok < seq_len
            page = tl.load(bt_row + tok // PAGE, mask=tok_ok, other=0).to(tl.int64)
            kv_mask = tok_ok[:, None] & d_ok[None, :]
        else:
            page = tl.load(bt_row + tok // PAGE).to(tl.int64)
            kv_mask = d_ok[None, :]
        in_page = tok % PAGE
        k_ptrs = k_cache + (page * stride_kb + in_page * stride_kt + kv_head_off_k)[:, None] + offs_d[None, :]
        k = tl.load(k_ptrs, mask=kv_mask, other=0.0)
        s = tl.zeros([q.shape[0], BLOCK_N], dtype=tl.float32)
        s = dot_acc(q, tl.trans(k), s, UPCAST, PRECISION) * qk_scale
        if CAUSAL:
            s = tl.where(tok[None, :] <= q_pos[:, None], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v_ptrs = v_cache + (page * stride_vb + in_page * stride_vt + kv_head_off_v)[:, None] + offs_d[None, :]
        v = tl.load(v_ptrs, mask=kv_mask, other=0.0)
        acc = dot_acc(p.to(v.dtype), v, acc * alpha[:, None], UPCAST, PRECISION)
        m_i = m_new
    return acc, m_i, l_i


@triton.jit
def _find_seq(qsl_ptr, seq_begin, seq_end, base, pid, BLOCK_Q: tl.constexpr):
    """Largest seq in [seq_begin, seq_end) whose first query tile index is <= pid.

    Tile index of seq i's first tile: (qsl[i] - base) // BLOCK_Q + (i - seq_begin); an upper bound
    on the tiles of the sequences before it, so a grid of (T // BLOCK_Q + B) covers every tile
    without host-side scheduling (same trick as vLLM's unified Triton attention).
    """
    lo = seq_begin
    hi = seq_end
    while lo < hi:
        mid = (lo + hi) // 2
        start = (tl.load(qsl_ptr + mid) - base) // BLOCK_Q + (mid - seq_begin)
        if start <= pid:
            lo = mid + 1
        else:
            hi = mid
    return lo - 1


@triton.jit(do_not_specialize=["seq_begin", "seq_end"])
def _paged_attn_kernel(
    q_ptr,
    k_cache,
    v_cache,
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
    UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
):
    pid_q = tl.program_id(0)
    kvh = tl.program_id(1)
    split = tl.program_id(2)

    if IS_DECODE:
        # Every sequence has q_len <= 1: program i is sequence seq_begin + i, no search needed.
        seq = seq_begin + pid_q
        q_tile = 0
    else:
        base = tl.load(qsl_ptr + seq_begin)
        seq = _find_seq(qsl_ptr, seq_begin, seq_end, base, pid_q, BLOCK_Q)
        q_tile = pid_q - ((tl.load(qsl_ptr + seq) - base) // BLOCK_Q + (seq - seq_begin))

    q_start = tl.load(qsl_ptr + seq)
    q_len = tl.load(qsl_ptr + seq + 1) - q_start
    tok0 = q_tile * BLOCK_Q
    if tok0 >= q_len:
        return
    seq_len = tl.load(seq_lens_ptr + seq)
    ctx_start = seq_len - q_len  # position of the sequence's first query token

    # Rows: (token, head-in-group), token-major.
    offs_m = tl.arange(0, BLOCK_M)
    row_tok = tok0 + offs_m // G
    head = kvh * G + offs_m % G
    row_ok = (offs_m < BLOCK_Q * G) & (row_tok < q_len)
    offs_d = tl.arange(0, D_PAD)
    d_ok = offs_d < HEAD_DIM
    t_idx = (q_start + row_tok).to(tl.int64)
    q_ptrs = q_ptr + (t_idx * stride_qt + head * stride_qh)[:, None] + offs_d[None, :]
    q = tl.load(q_ptrs, mask=row_ok[:, None] & d_ok[None, :], other=0.0)
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

    acc = tl.zeros([BLOCK_M, D_PAD], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], _NEG_BIG, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    bt_row = bt_ptr + seq.to(tl.int64) * stride_bt
    koff = kvh.to(tl.int64) * stride_kh
    voff = kvh.to(tl.int64) * stride_vh
    acc, m_i, l_i = _attend_kv_tiles(
        acc, m_i, l_i, q, q_pos, k_cache, v_cache, bt_row, koff, voff,
        stride_kb, stride_kt, stride_vb, stride_vt, seq_len,
        lo, tl.minimum(hi, n_full), qk_scale,
        PAGE, BLOCK_N, HEAD_DIM, D_PAD, False, UPCAST, PRECISION,
    )  # fmt: skip
    acc, m_i, l_i = _attend_kv_tiles(
        acc, m_i, l_i, q, q_pos, k_cache, v_cache, bt_row, koff, voff,
        stride_kb, stride_kt, stride_vb, stride_vt, seq_len,
        tl.maximum(lo, n_full), hi, qk_scale,
        PAGE, BLOCK_N, HEAD_DIM, D_PAD, True, UPCAST, PRECISION,
    )  # fmt: skip

    store_mask = row_ok[:, None] & d_ok[None, :]
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
