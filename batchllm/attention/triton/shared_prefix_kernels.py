"""Device code of horizontally fused prefix-shared ("cascade") attention: one launch + one merge.

Contract: `SharedPrefixMetadata` (metadata.py); same result as `paged_attention_reference`, computed
as `shared_prefix_attention_reference` does (shared segments + distinct parts + exact merge).
Host-side planning is in shared_prefix_plan.py, the launch in shared_prefix.py.

One launch, a 1-D grid split into regions by program id (each region has its own constexpr tiles):

* [0, n_shared): shared tiles. A tile = (segment s, a block of S_BLOCK_M stacked query rows of s,
  one KV head, one KV split). Rows are (query token, query head of the KV head's group) pairs,
  token-major over the segment's tokens [seg_q_start, seg_q_end), so for decode M = members x G.
  The tile walks the segment's KV [seg_kv_start, seg_kv_end) without a causal mask (every member's
  queries sit after it): the prefix KV is read from HBM once per (segment, KV head, M-tile, split)
  instead of once per member, and the tl.dot M dimension is filled by members instead of padding.
  Shared tiles come first in the grid: they are the long programs, so they start first.
* [n_shared, n_shared + n_decode): distinct decode tiles, one per (leading q_len == 1 sequence,
  KV head), M = G padded to 16 (as paged.py's decode), over KV [distinct_kv_start, seq_len).
* the rest: distinct extend tiles for the remaining sequences (any q_len), BLOCK_M // G tokens each,
  causal within the sequence's own part (as paged.py's prefill/extend tiles).

Every tile writes a normalised partial O (fp32) and its log2-domain LSE into
part_out [P, T, Hq, D] / part_lse [P, T, Hq], P = num_levels * splits + 1: slot level * splits + split
for shared tiles, slot P - 1 for the distinct part. Levels that do not cover a token keep
LSE = -inf (the host fills the LSE slots of levels that do not cover every token). `_merge_kernel`
then computes O = sum_i 2^(L_i - L) O_i exactly and writes the output in the query dtype.

An FP8 cache (KV_FP8) is read as FP8 and widened in registers by the shared KV loop (kv_loop.py).

Tile sizes are per region (constexprs of separate branches), but num_warps, num_stages and the
register count are per launch: the fused kernel uses the maximum over its regions (8 warps with a
128-register cap when shared tiles have 128 rows, which ptxas fits without spills on sm_90, so
two CTAs share an SM). The cascade variant specialises each of its launches instead.

Split-K over a segment's KV is used when few long shared programs would otherwise be the tail
(heuristic in `_choose_shared_splits`). `cascade=True` runs the same work as three launches
(shared, distinct, merge; each specialised) like FlashInfer's cascade kernels, for ablation.
"""

from __future__ import annotations

import triton
import triton.language as tl

from batchllm.attention.triton.kv_loop import NEG_BIG, attend_kv_range
from batchllm.attention.triton.query_tile import load_query_rows, seq_query_tile


@triton.jit
def _store_partial(
    acc, m_i, l_i, slot, t_idx, head, row_ok, part_out_ptr, part_lse_ptr,
    stride_pp, stride_pt, stride_ph, stride_lp, stride_lt, stride_lh,
    HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr,
):  # fmt: skip
    """Normalised partial O and log2 LSE; an empty range (l == 0) stores O = 0, LSE = -inf."""
    offs_d = tl.arange(0, D_PAD)
    has = l_i > 0.0
    safe_l = tl.where(has, l_i, 1.0)
    o = acc / safe_l[:, None]
    lse = tl.where(has, m_i + tl.log2(safe_l), float("-inf"))
    slot64 = slot.to(tl.int64)
    o_row = slot64 * stride_pp + t_idx * stride_pt + head * stride_ph
    tl.store(part_out_ptr + o_row[:, None] + offs_d[None, :], o, mask=row_ok[:, None] & (offs_d < HEAD_DIM)[None, :])
    tl.store(part_lse_ptr + slot64 * stride_lp + t_idx * stride_lt + head * stride_lh, lse, mask=row_ok)


@triton.jit
def _last_le(ptr, n, x):
    """Largest i in [0, n) with ptr[i] <= x (ptr non-decreasing, ptr[0] <= x)."""
    lo = 0
    hi = n
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if tl.load(ptr + mid) <= x:
            lo = mid
        else:
            hi = mid
    return lo


@triton.jit
def _shared_tile(
    pid, q_ptr, k_cache, v_cache, k_scale_ptr, v_scale_ptr, part_out_ptr, part_lse_ptr,
    seg_tile_ptr, seg_qs_ptr, seg_qe_ptr, seg_ks_ptr, seg_ke_ptr, seg_lvl_ptr, seg_bt_ptr, num_segments, splits,
    stride_qt, stride_qh, stride_kb, stride_kt, stride_kh, stride_vb, stride_vt, stride_vh, stride_sbt,
    stride_pp, stride_pt, stride_ph, stride_lp, stride_lt, stride_lh, qk_scale,
    G: tl.constexpr, HKV: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_N: tl.constexpr,
    PAGE: tl.constexpr, HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr,
    KV_FP8: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr, INTERPRET: tl.constexpr,
):  # fmt: skip
    # pid -> (segment M-tile, split, KV head), KV head fastest: the programs that run together read
    # the same pages of the same segment (other heads), and a segment's M-tiles/splits are adjacent.
    # The split count is a runtime value (one compiled variant serves every split factor).
    kvh = pid % HKV
    rest = pid // HKV
    split = rest % splits
    gtile = rest // splits
    # A CUDA-graph launch has a fixed grid sized for the worst case: tiles past the real ones
    # (seg_tile_ptr[num_segments]) have nothing to do.
    if gtile < tl.load(seg_tile_ptr + num_segments):
        seg = _last_le(seg_tile_ptr, num_segments, gtile)
        m_tile = gtile - tl.load(seg_tile_ptr + seg)
        q_lo = tl.load(seg_qs_ptr + seg)
        q_hi = tl.load(seg_qe_ptr + seg)
        kv_lo = tl.load(seg_ks_ptr + seg)
        kv_hi = tl.load(seg_ke_ptr + seg)
        level = tl.load(seg_lvl_ptr + seg)

        # Rows are the segment's flat query tokens (q_start 0): row_tok is the token itself.
        q, row_tok, head, row_ok, t_idx = load_query_rows(
            q_ptr, 0, q_lo + m_tile * BLOCK_Q, q_hi, kvh, stride_qt, stride_qh, G, BLOCK_M, BLOCK_Q, HEAD_DIM, D_PAD
        )

        n_kv = kv_hi - kv_lo
        n_tiles = tl.cdiv(n_kv, BLOCK_N)
        n_full = n_kv // BLOCK_N
        per_split = tl.cdiv(n_tiles, splits)
        lo = split * per_split
        hi = tl.minimum(lo + per_split, n_tiles)
        bt_row = seg_bt_ptr + seg.to(tl.int64) * stride_sbt
        acc, m_i, l_i = attend_kv_range(
            q, row_tok, kv_lo, kv_hi, lo, hi, n_full, k_cache, v_cache, k_scale_ptr, v_scale_ptr, bt_row, kvh,
            stride_kb, stride_kt, stride_kh, stride_vb, stride_vt, stride_vh, qk_scale,
            PAGE, BLOCK_N, HEAD_DIM, D_PAD, False, KV_FP8, UPCAST, PRECISION, INTERPRET,
        )  # fmt: skip
        _store_partial(
            acc, m_i, l_i, level * splits + split, t_idx, head, row_ok, part_out_ptr, part_lse_ptr,
            stride_pp, stride_pt, stride_ph, stride_lp, stride_lt, stride_lh, HEAD_DIM, D_PAD,
        )  # fmt: skip


@triton.jit
def _distinct_tile(
    pid, seq_begin, seq_end, distinct_slot, q_ptr, k_cache, v_cache, k_scale_ptr, v_scale_ptr,
    part_out_ptr, part_lse_ptr, qsl_ptr, seq_lens_ptr, bt_ptr, dks_ptr,
    stride_qt, stride_qh, stride_kb, stride_kt, stride_kh, stride_vb, stride_vt, stride_vh, stride_bt,
    stride_pp, stride_pt, stride_ph, stride_lp, stride_lt, stride_lh, qk_scale,
    G: tl.constexpr, HKV: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_N: tl.constexpr,
    IS_DECODE: tl.constexpr, PAGE: tl.constexpr, HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr,
    KV_FP8: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr, INTERPRET: tl.constexpr,
):  # fmt: skip
    kvh = pid % HKV
    tile = pid // HKV
    seq, q_start, q_len, tok0 = seq_query_tile(qsl_ptr, seq_begin, seq_end, tile, BLOCK_Q, IS_DECODE)
    if tok0 < q_len:
        seq_len = tl.load(seq_lens_ptr + seq)
        kv_lo = tl.load(dks_ptr + seq)
        ctx_start = seq_len - q_len  # position of the sequence's first query token
        q, row_tok, head, row_ok, t_idx = load_query_rows(
            q_ptr, q_start, tok0, q_len, kvh, stride_qt, stride_qh, G, BLOCK_M, BLOCK_Q, HEAD_DIM, D_PAD
        )
        q_pos = ctx_start + row_tok
        # KV of the own part up to the tile's last query; tokens <= its first query need no mask.
        kv_end = ctx_start + tl.minimum(q_len, tok0 + BLOCK_Q)
        n_tiles = tl.cdiv(kv_end - kv_lo, BLOCK_N)
        n_full = tl.maximum(ctx_start + tok0 + 1 - kv_lo, 0) // BLOCK_N
        bt_row = bt_ptr + seq.to(tl.int64) * stride_bt
        acc, m_i, l_i = attend_kv_range(
            q, q_pos, kv_lo, seq_len, 0, n_tiles, n_full, k_cache, v_cache, k_scale_ptr, v_scale_ptr, bt_row, kvh,
            stride_kb, stride_kt, stride_kh, stride_vb, stride_vt, stride_vh, qk_scale,
            PAGE, BLOCK_N, HEAD_DIM, D_PAD, True, KV_FP8, UPCAST, PRECISION, INTERPRET,
        )  # fmt: skip
        _store_partial(
            acc, m_i, l_i, distinct_slot, t_idx, head, row_ok, part_out_ptr, part_lse_ptr,
            stride_pp, stride_pt, stride_ph, stride_lp, stride_lt, stride_lh, HEAD_DIM, D_PAD,
        )  # fmt: skip


# Batch-dependent scalars and block-table widths are unspecialised: no value (== 1, divisible by 16)
# selects another compiled variant in the middle of a run.
@triton.jit(do_not_specialize=["num_segments", "splits", "n_shared", "n_decode", "num_decodes", "num_seqs",
                               "pid_base", "distinct_slot", "stride_bt", "stride_sbt"])  # fmt: skip
def _shared_prefix_kernel(
    q_ptr, k_cache, v_cache, k_scale_ptr, v_scale_ptr, part_out_ptr, part_lse_ptr,
    qsl_ptr, seq_lens_ptr, bt_ptr, dks_ptr,
    seg_tile_ptr, seg_qs_ptr, seg_qe_ptr, seg_ks_ptr, seg_ke_ptr, seg_lvl_ptr, seg_bt_ptr,
    stride_qt, stride_qh, stride_kb, stride_kt, stride_kh, stride_vb, stride_vt, stride_vh,
    stride_bt, stride_sbt, stride_pp, stride_pt, stride_ph, stride_lp, stride_lt, stride_lh,
    num_segments, splits, n_shared, n_decode, num_decodes, num_seqs, pid_base, distinct_slot, qk_scale,
    G: tl.constexpr, HKV: tl.constexpr, PAGE: tl.constexpr, HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr,
    S_BLOCK_M: tl.constexpr, S_BLOCK_Q: tl.constexpr, S_BLOCK_N: tl.constexpr,
    D_BLOCK_M: tl.constexpr, D_BLOCK_N: tl.constexpr,
    E_BLOCK_M: tl.constexpr, E_BLOCK_Q: tl.constexpr, E_BLOCK_N: tl.constexpr,
    HAS_SHARED: tl.constexpr, HAS_DECODE: tl.constexpr, HAS_EXTEND: tl.constexpr,
    KV_FP8: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr, INTERPRET: tl.constexpr,
):  # fmt: skip
    """Program pid (+ pid_base, for the cascade variant's separate launches) -> one tile of one region.

    HAS_* prune regions a launch cannot reach, so their registers/shared memory do not count.
    """
    pid = tl.program_id(0) + pid_base
    if pid < n_shared:
        if HAS_SHARED:
            _shared_tile(
                pid, q_ptr, k_cache, v_cache, k_scale_ptr, v_scale_ptr, part_out_ptr, part_lse_ptr,
                seg_tile_ptr, seg_qs_ptr, seg_qe_ptr, seg_ks_ptr, seg_ke_ptr, seg_lvl_ptr, seg_bt_ptr, num_segments,
                splits, stride_qt, stride_qh, stride_kb, stride_kt, stride_kh, stride_vb, stride_vt, stride_vh, stride_sbt,
                stride_pp, stride_pt, stride_ph, stride_lp, stride_lt, stride_lh, qk_scale,
                G, HKV, S_BLOCK_M, S_BLOCK_Q, S_BLOCK_N, PAGE, HEAD_DIM, D_PAD,
                KV_FP8, UPCAST, PRECISION, INTERPRET,
            )  # fmt: skip
    else:
        pid = pid - n_shared
        if pid < n_decode:
            if HAS_DECODE:
                _distinct_tile(
                    pid, 0, num_decodes, distinct_slot, q_ptr, k_cache, v_cache, k_scale_ptr, v_scale_ptr,
                    part_out_ptr, part_lse_ptr, qsl_ptr, seq_lens_ptr, bt_ptr, dks_ptr,
                    stride_qt, stride_qh, stride_kb, stride_kt, stride_kh, stride_vb, stride_vt, stride_vh, stride_bt,
                    stride_pp, stride_pt, stride_ph, stride_lp, stride_lt, stride_lh, qk_scale,
                    G, HKV, D_BLOCK_M, 1, D_BLOCK_N, True, PAGE, HEAD_DIM, D_PAD, KV_FP8, UPCAST, PRECISION,
                    INTERPRET,
                )  # fmt: skip
        else:
            if HAS_EXTEND:
                _distinct_tile(
                    pid - n_decode, num_decodes, num_seqs, distinct_slot, q_ptr, k_cache, v_cache,
                    k_scale_ptr, v_scale_ptr, part_out_ptr, part_lse_ptr, qsl_ptr, seq_lens_ptr, bt_ptr, dks_ptr,
                    stride_qt, stride_qh, stride_kb, stride_kt, stride_kh, stride_vb, stride_vt, stride_vh, stride_bt,
                    stride_pp, stride_pt, stride_ph, stride_lp, stride_lt, stride_lh, qk_scale,
                    G, HKV, E_BLOCK_M, E_BLOCK_Q, E_BLOCK_N, False, PAGE, HEAD_DIM, D_PAD,
                    KV_FP8, UPCAST, PRECISION, INTERPRET,
                )  # fmt: skip


@triton.jit(do_not_specialize=["num_parts"])
def _merge_kernel(
    part_out_ptr, part_lse_ptr, out_ptr,
    stride_pp, stride_pt, stride_ph, stride_lp, stride_lt, stride_lh, stride_ot, stride_oh, num_heads, num_parts,
    H_BLOCK: tl.constexpr, HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr, INTERPRET: tl.constexpr,
):  # fmt: skip
    """out[t, h] = sum_p 2^(lse_p - L) O_p, L = log2 sum_p 2^lse_p, for H_BLOCK heads of token t.

    Partials with LSE = -inf are never read (their O may be unwritten memory), so uncovered levels and
    empty splits cost no bandwidth. The part count is a runtime value: one compiled variant for all.
    """
    t = tl.program_id(0).to(tl.int64)
    offs_h = tl.program_id(1) * H_BLOCK + tl.arange(0, H_BLOCK)
    offs_d = tl.arange(0, D_PAD)
    h_ok = offs_h < num_heads
    d_ok = offs_d < HEAD_DIM
    m = tl.full([H_BLOCK], NEG_BIG, dtype=tl.float32)
    w_sum = tl.zeros([H_BLOCK], dtype=tl.float32)
    acc = tl.zeros([H_BLOCK, D_PAD], dtype=tl.float32)
    if INTERPRET:  # no range() over a runtime scalar in the interpreter (see kv_steps)
        p = 0
        while p < num_parts:
            acc, m, w_sum = _merge_part(
                acc, m, w_sum, p, t, offs_h, offs_d, h_ok, d_ok, part_out_ptr, part_lse_ptr,
                stride_pp, stride_pt, stride_ph, stride_lp, stride_lt, stride_lh,
            )  # fmt: skip
            p += 1
    else:
        for p in range(num_parts):
            acc, m, w_sum = _merge_part(
                acc, m, w_sum, p, t, offs_h, offs_d, h_ok, d_ok, part_out_ptr, part_lse_ptr,
                stride_pp, stride_pt, stride_ph, stride_lp, stride_lt, stride_lh,
            )  # fmt: skip
    res = acc / tl.where(w_sum > 0.0, w_sum, 1.0)[:, None]  # padded heads: no live partial
    o_ptrs = out_ptr + t * stride_ot + (offs_h * stride_oh)[:, None] + offs_d[None, :]
    tl.store(o_ptrs, res.to(out_ptr.dtype.element_ty), mask=h_ok[:, None] & d_ok[None, :])


@triton.jit
def _merge_part(
    acc, m, w_sum, p, t, offs_h, offs_d, h_ok, d_ok, part_out_ptr, part_lse_ptr,
    stride_pp, stride_pt, stride_ph, stride_lp, stride_lt, stride_lh,
):  # fmt: skip
    lse = tl.load(part_lse_ptr + p * stride_lp + t * stride_lt + offs_h * stride_lh, mask=h_ok, other=float("-inf"))
    live = lse > NEG_BIG
    o = tl.load(
        part_out_ptr + p * stride_pp + t * stride_pt + (offs_h * stride_ph)[:, None] + offs_d[None, :],
        mask=(live & h_ok)[:, None] & d_ok[None, :],
        other=0.0,
    )
    m_new = tl.maximum(m, lse)
    alpha = tl.exp2(m - m_new)
    w = tl.exp2(lse - m_new)
    acc = acc * alpha[:, None] + w[:, None] * o
    w_sum = w_sum * alpha + w
    return acc, m_new, w_sum
