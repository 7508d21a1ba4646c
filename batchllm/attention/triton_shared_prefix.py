"""Horizontally fused prefix-shared ("cascade") attention in Triton: one launch + one merge.

Contract: `SharedPrefixMetadata` (metadata.py); same result as `paged_attention_reference`, computed
as `shared_prefix_attention_reference` does (shared segments + distinct parts + exact merge).

One launch, a 1-D grid split into regions by program id (each region has its own constexpr tiles):

* [0, n_shared): shared tiles. A tile = (segment s, a block of S_BLOCK_M stacked query rows of s,
  one KV head, one KV split). Rows are (query token, query head of the KV head's group) pairs,
  token-major over the segment's tokens [seg_q_start, seg_q_end), so for decode M = members x G.
  The tile walks the segment's KV [seg_kv_start, seg_kv_end) without a causal mask (every member's
  queries sit after it): the prefix KV is read from HBM once per (segment, KV head, M-tile, split)
  instead of once per member, and the tl.dot M dimension is filled by members instead of padding.
  Shared tiles come first in the grid: they are the long programs, so they start first.
* [n_shared, n_shared + n_decode): distinct decode tiles, one per (leading q_len == 1 sequence,
  KV head), M = G padded to 16 (as triton_paged's decode), over KV [distinct_kv_start, seq_len).
* the rest: distinct extend tiles for the remaining sequences (any q_len), BLOCK_M // G tokens each,
  causal within the sequence's own part (as triton_paged's prefill/extend tiles).

Every tile writes a normalised partial O (fp32) and its log2-domain LSE into
part_out [P, T, Hq, D] / part_lse [P, T, Hq], P = num_levels * splits + 1: slot level * splits + split
for shared tiles, slot P - 1 for the distinct part. Levels that do not cover a token keep
LSE = -inf (the host fills the LSE slots of levels that do not cover every token). `_merge_kernel`
then computes O = sum_i 2^(L_i - L) O_i exactly and writes the output in the query dtype.

Tile sizes are per region (constexprs of separate branches), but num_warps, num_stages and the
register count are per launch: the fused kernel uses the maximum over its regions (8 warps with a
128-register cap when shared tiles have 128 rows, which ptxas fits without spills on sm_90, so
two CTAs share an SM). The cascade variant specialises each of its launches instead.

Split-K over a segment's KV is used when few long shared programs would otherwise be the tail
(heuristic in `_choose_shared_splits`). `cascade=True` runs the same work as three launches
(shared, distinct, merge; each specialised) like FlashInfer's cascade kernels, for ablation.

The per-batch work plan (segment tile offsets on the device, tile sizes, split count) is computed
from the host copies once and cached on the `SharedPrefixMetadata` object, so the 30-odd layers of a
forward pass reuse it: build a new metadata object per batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import triton
import triton.language as tl

from batchllm.attention.metadata import AttentionMetadata, SharedPrefixMetadata
from batchllm.attention.triton_kv_loop import NEG_BIG, attend_kv_range
from batchllm.attention.triton_paged import LOG2E, _check_inputs, _find_seq
from batchllm.attention.triton_utils import (
    cdiv,
    dot_precision,
    is_interpreter,
    next_pow2,
    num_sms,
    upcast_dot,
)
from batchllm.host_to_device import to_device



@dataclass(frozen=True)
class SharedPrefixConfig:
    """Tile shapes of the fused launch. shared_block_m caps the stacked rows of a shared tile (the
    actual M is the smallest power of two >= the largest segment's rows, at least 16)."""

    shared_block_m: int
    shared_block_n: int
    decode_block_n: int
    extend_block_m: int
    extend_block_n: int
    num_warps: int  # 0: 8 warps if some tile has >= 128 rows, else 4
    num_stages: int
    # Register cap per thread. None: 128 when 8 warps (a 128-row tile then still fits without spills
    # on sm_90 and two CTAs share an SM instead of one at ~190 registers); 0: no cap.
    maxnreg: int | None = None


# A launch with at least this many query tokens beyond one per sequence is prefill-heavy: its time is
# then the member-prefill and extend tiles', which want taller tiles and 8 warps.
PREFILL_HEAVY_TOKENS = 512


def is_prefill_heavy(num_tokens: int, num_seqs: int) -> bool:
    return num_tokens - num_seqs >= PREFILL_HEAVY_TOKENS


def shared_prefix_config(
    num_q_heads: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype, prefill_heavy: bool = False
) -> SharedPrefixConfig:
    """Tile shapes for a launch; `prefill_heavy` launches (see is_prefill_heavy) get their own in 16-bit."""
    if dtype == torch.float32:  # twice the registers per element: smaller tiles
        return SharedPrefixConfig(64, 32, 32, 64, 32, 4, 2)
    if head_dim <= 128 and prefill_heavy:
        # Best of the prefill sweep on an H100 (bench_prefill_attention.py): 1.33-1.46x the decode tiles
        # on micro / multilevel prefill iterations, and at least as fast as the unfused paged kernel.
        return SharedPrefixConfig(128, 64, 64, 128, 64, 8, 2)
    if head_dim <= 128:
        # Best of the config sweep on an H200 (bench_shared_prefix.py, degree 16, batch 256 and 1024).
        return SharedPrefixConfig(64, 32, 64, 64, 64, 4, 3)
    return SharedPrefixConfig(64, 32, 32, 64, 32, 4, 2)


# --------------------------------------------------------------------------------------------
# Device code
# --------------------------------------------------------------------------------------------


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
    pid, q_ptr, k_cache, v_cache, part_out_ptr, part_lse_ptr,
    seg_tile_ptr, seg_qs_ptr, seg_qe_ptr, seg_ks_ptr, seg_ke_ptr, seg_lvl_ptr, seg_bt_ptr, num_segments, splits,
    stride_qt, stride_qh, stride_kb, stride_kt, stride_kh, stride_vb, stride_vt, stride_vh, stride_sbt,
    stride_pp, stride_pt, stride_ph, stride_lp, stride_lt, stride_lh, qk_scale,
    G: tl.constexpr, HKV: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_N: tl.constexpr,
    PAGE: tl.constexpr, HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr, INTERPRET: tl.constexpr,
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

        offs_m = tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, D_PAD)
        row_tok = q_lo + m_tile * BLOCK_Q + offs_m // G
        head = kvh * G + offs_m % G
        row_ok = (offs_m < BLOCK_Q * G) & (row_tok < q_hi)
        t_idx = row_tok.to(tl.int64)
        q = tl.load(
            q_ptr + (t_idx * stride_qt + head * stride_qh)[:, None] + offs_d[None, :],
            mask=row_ok[:, None] & (offs_d < HEAD_DIM)[None, :],
            other=0.0,
        )

        n_kv = kv_hi - kv_lo
        n_tiles = tl.cdiv(n_kv, BLOCK_N)
        n_full = n_kv // BLOCK_N
        per_split = tl.cdiv(n_tiles, splits)
        lo = split * per_split
        hi = tl.minimum(lo + per_split, n_tiles)
        bt_row = seg_bt_ptr + seg.to(tl.int64) * stride_sbt
        acc, m_i, l_i = attend_kv_range(
            q, row_tok, kv_lo, kv_hi, lo, hi, n_full, k_cache, v_cache, bt_row, kvh,
            stride_kb, stride_kt, stride_kh, stride_vb, stride_vt, stride_vh, qk_scale,
            PAGE, BLOCK_N, HEAD_DIM, D_PAD, False, UPCAST, PRECISION, INTERPRET,
        )  # fmt: skip
        _store_partial(
            acc, m_i, l_i, level * splits + split, t_idx, head, row_ok, part_out_ptr, part_lse_ptr,
            stride_pp, stride_pt, stride_ph, stride_lp, stride_lt, stride_lh, HEAD_DIM, D_PAD,
        )  # fmt: skip


@triton.jit
def _distinct_tile(
    pid, seq_begin, seq_end, distinct_slot, q_ptr, k_cache, v_cache, part_out_ptr, part_lse_ptr,
    qsl_ptr, seq_lens_ptr, bt_ptr, dks_ptr,
    stride_qt, stride_qh, stride_kb, stride_kt, stride_kh, stride_vb, stride_vt, stride_vh, stride_bt,
    stride_pp, stride_pt, stride_ph, stride_lp, stride_lt, stride_lh, qk_scale,
    G: tl.constexpr, HKV: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_N: tl.constexpr,
    IS_DECODE: tl.constexpr, PAGE: tl.constexpr, HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr, INTERPRET: tl.constexpr,
):  # fmt: skip
    kvh = pid % HKV
    tile = pid // HKV
    if IS_DECODE:  # one q_len == 1 sequence per tile
        seq = seq_begin + tile
        q_tile = 0
    else:
        base = tl.load(qsl_ptr + seq_begin)
        seq = _find_seq(qsl_ptr, seq_begin, seq_end, base, tile, BLOCK_Q)
        q_tile = tile - ((tl.load(qsl_ptr + seq) - base) // BLOCK_Q + (seq - seq_begin))
    q_start = tl.load(qsl_ptr + seq)
    q_len = tl.load(qsl_ptr + seq + 1) - q_start
    tok0 = q_tile * BLOCK_Q
    if tok0 < q_len:
        seq_len = tl.load(seq_lens_ptr + seq)
        kv_lo = tl.load(dks_ptr + seq)
        ctx_start = seq_len - q_len  # position of the sequence's first query token
        offs_m = tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, D_PAD)
        row_tok = tok0 + offs_m // G
        head = kvh * G + offs_m % G
        row_ok = (offs_m < BLOCK_Q * G) & (row_tok < q_len)
        t_idx = (q_start + row_tok).to(tl.int64)
        q = tl.load(
            q_ptr + (t_idx * stride_qt + head * stride_qh)[:, None] + offs_d[None, :],
            mask=row_ok[:, None] & (offs_d < HEAD_DIM)[None, :],
            other=0.0,
        )
        q_pos = ctx_start + row_tok
        # KV of the own part up to the tile's last query; tokens <= its first query need no mask.
        kv_end = ctx_start + tl.minimum(q_len, tok0 + BLOCK_Q)
        n_tiles = tl.cdiv(kv_end - kv_lo, BLOCK_N)
        n_full = tl.maximum(ctx_start + tok0 + 1 - kv_lo, 0) // BLOCK_N
        bt_row = bt_ptr + seq.to(tl.int64) * stride_bt
        acc, m_i, l_i = attend_kv_range(
            q, q_pos, kv_lo, seq_len, 0, n_tiles, n_full, k_cache, v_cache, bt_row, kvh,
            stride_kb, stride_kt, stride_kh, stride_vb, stride_vt, stride_vh, qk_scale,
            PAGE, BLOCK_N, HEAD_DIM, D_PAD, True, UPCAST, PRECISION, INTERPRET,
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
    q_ptr, k_cache, v_cache, part_out_ptr, part_lse_ptr,
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
    UPCAST: tl.constexpr, PRECISION: tl.constexpr, INTERPRET: tl.constexpr,
):  # fmt: skip
    """Program pid (+ pid_base, for the cascade variant's separate launches) -> one tile of one region.

    HAS_* prune regions a launch cannot reach, so their registers/shared memory do not count.
    """
    pid = tl.program_id(0) + pid_base
    if pid < n_shared:
        if HAS_SHARED:
            _shared_tile(
                pid, q_ptr, k_cache, v_cache, part_out_ptr, part_lse_ptr,
                seg_tile_ptr, seg_qs_ptr, seg_qe_ptr, seg_ks_ptr, seg_ke_ptr, seg_lvl_ptr, seg_bt_ptr, num_segments,
                splits, stride_qt, stride_qh, stride_kb, stride_kt, stride_kh, stride_vb, stride_vt, stride_vh, stride_sbt,
                stride_pp, stride_pt, stride_ph, stride_lp, stride_lt, stride_lh, qk_scale,
                G, HKV, S_BLOCK_M, S_BLOCK_Q, S_BLOCK_N, PAGE, HEAD_DIM, D_PAD,
                UPCAST, PRECISION, INTERPRET,
            )  # fmt: skip
    else:
        pid = pid - n_shared
        if pid < n_decode:
            if HAS_DECODE:
                _distinct_tile(
                    pid, 0, num_decodes, distinct_slot, q_ptr, k_cache, v_cache, part_out_ptr, part_lse_ptr,
                    qsl_ptr, seq_lens_ptr, bt_ptr, dks_ptr,
                    stride_qt, stride_qh, stride_kb, stride_kt, stride_kh, stride_vb, stride_vt, stride_vh, stride_bt,
                    stride_pp, stride_pt, stride_ph, stride_lp, stride_lt, stride_lh, qk_scale,
                    G, HKV, D_BLOCK_M, 1, D_BLOCK_N, True, PAGE, HEAD_DIM, D_PAD, UPCAST, PRECISION, INTERPRET,
                )  # fmt: skip
        else:
            if HAS_EXTEND:
                _distinct_tile(
                    pid - n_decode, num_decodes, num_seqs, distinct_slot, q_ptr, k_cache, v_cache,
                    part_out_ptr, part_lse_ptr, qsl_ptr, seq_lens_ptr, bt_ptr, dks_ptr,
                    stride_qt, stride_qh, stride_kb, stride_kt, stride_kh, stride_vb, stride_vt, stride_vh, stride_bt,
                    stride_pp, stride_pt, stride_ph, stride_lp, stride_lt, stride_lh, qk_scale,
                    G, HKV, E_BLOCK_M, E_BLOCK_Q, E_BLOCK_N, False, PAGE, HEAD_DIM, D_PAD,
                    UPCAST, PRECISION, INTERPRET,
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


# --------------------------------------------------------------------------------------------
# Host code
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Plan:
    """Per-batch launch plan, derived from host copies only (no device sync)."""

    seg_tile_start: torch.Tensor  # [S + 1] int32 on the device: first global M-tile of each segment
    num_seg_tiles: int
    s_block_m: int
    s_block_q: int
    splits: int
    num_decodes: int  # leading q_len == 1 sequences (decode region)
    n_extend_tiles: int  # upper bound on the extend region's query tiles
    e_block_m: int
    e_block_q: int
    num_warps: int
    maxnreg: int  # 0: no cap
    fully_covered: bool  # every level covers every token (no -inf fill needed)


def _num_leading_decodes(q_lens: np.ndarray) -> int:
    not_decode = np.flatnonzero(q_lens != 1)
    return int(not_decode[0]) if len(not_decode) else len(q_lens)


def _choose_shared_splits(
    seg_rows_tiles: np.ndarray, seg_kv_tiles: np.ndarray, distinct_work: int, num_kv_heads: int, sms: int
) -> int:
    """Split a segment's KV when its shared programs would be longer than the average work per
    program slot (~2 resident programs per SM): then they, not the total work, set the runtime."""
    if len(seg_kv_tiles) == 0:
        return 1
    work = int((seg_rows_tiles * seg_kv_tiles).sum()) * num_kv_heads + distinct_work
    per_slot = max(8.0, work / (2 * sms))
    longest = int(seg_kv_tiles.max())
    splits = 1
    while splits < 16 and longest / splits > per_slot:
        splits *= 2
    return splits


def _make_plan(
    meta: AttentionMetadata, cfg: SharedPrefixConfig, group: int, num_kv_heads: int, device: torch.device,
    splits: int | None,
) -> _Plan:  # fmt: skip
    shared = meta.shared
    qs = np.asarray(shared.seg_q_start_cpu, dtype=np.int64)
    qe = np.asarray(shared.seg_q_end_cpu, dtype=np.int64)
    kvs = np.asarray(shared.seg_kv_start_cpu, dtype=np.int64)
    kve = np.asarray(shared.seg_kv_end_cpu, dtype=np.int64)
    q_tokens = np.maximum(qe - qs, 0)
    max_rows = int(q_tokens.max()) * group if len(q_tokens) else 0
    # Two tile heights only (small groups / everything else): every distinct constexpr set is a separate
    # Triton JIT compile of seconds, paid mid-run the first time a batch shape needs it.
    small = max(16, next_pow2(group))
    s_block_m = small if max_rows <= small else max(small, cfg.shared_block_m)
    s_block_q = s_block_m // group
    tiles = -(-q_tokens // s_block_q)
    tile_start = np.concatenate([[0], np.cumsum(tiles)]).astype(np.int32)

    qsl = np.asarray(meta.query_start_loc_cpu, dtype=np.int64)
    q_lens = np.diff(qsl)
    num_decodes = _num_leading_decodes(q_lens)
    e_block_m = max(cfg.extend_block_m, next_pow2(group))
    e_block_q = e_block_m // group
    num_seqs = len(q_lens)
    n_rest_tokens = int(qsl[-1] - qsl[num_decodes])
    n_extend_tiles = n_rest_tokens // e_block_q + (num_seqs - num_decodes) if num_decodes < num_seqs else 0

    if splits is None:
        own_kv = np.asarray(meta.seq_lens_cpu, dtype=np.int64) - np.asarray(shared.distinct_kv_start_cpu, dtype=np.int64)
        distinct_work = int((-(-np.maximum(own_kv, 0) // cfg.decode_block_n)).sum()) * num_kv_heads
        splits = _choose_shared_splits(tiles, -(-(kve - kvs) // cfg.shared_block_n), distinct_work, num_kv_heads,
                                       num_sms(device))  # fmt: skip
    num_warps = cfg.num_warps or (8 if max(s_block_m, e_block_m if n_extend_tiles else 0) >= 128 else 4)
    maxnreg = _maxnreg(cfg, num_warps)

    covered = np.zeros(max(shared.num_levels, 1), dtype=np.int64)
    np.add.at(covered, np.asarray(shared.seg_level_cpu, dtype=np.int64), q_tokens)
    fully_covered = bool((covered[: shared.num_levels] == qsl[-1]).all())
    return _Plan(
        seg_tile_start=to_device(tile_start, torch.int32, device),
        num_seg_tiles=int(tile_start[-1]),
        s_block_m=s_block_m, s_block_q=s_block_q, splits=splits,
        num_decodes=num_decodes, n_extend_tiles=n_extend_tiles, e_block_m=e_block_m, e_block_q=e_block_q,
        num_warps=num_warps, maxnreg=maxnreg, fully_covered=fully_covered,
    )  # fmt: skip


def _maxnreg(cfg: SharedPrefixConfig, num_warps: int) -> int:
    if cfg.maxnreg is not None:
        return cfg.maxnreg
    return 128 if num_warps == 8 else 0


def _launch_opts(num_warps: int, maxnreg: int) -> dict:
    opts = dict(num_warps=num_warps)
    if maxnreg and not is_interpreter():
        opts["maxnreg"] = maxnreg
    return opts


def _get_plan(meta, cfg, group, num_kv_heads, device, splits) -> _Plan:
    """Plans are cached on the SharedPrefixMetadata object (one per batch, reused by every layer)."""
    shared: SharedPrefixMetadata = meta.shared
    cache = shared.__dict__.setdefault("_triton_plans", {})
    key = (cfg, group, num_kv_heads, str(device), splits)
    if key not in cache:
        cache[key] = _make_plan(meta, cfg, group, num_kv_heads, device, splits)
    return cache[key]


@dataclass(frozen=True)
class DecodeGraphShape:
    """What a CUDA graph of a pure-decode batch with shared segments fixes, besides its batch size."""

    num_levels: int
    s_block_m: int
    splits: int


def decode_graph_shape(
    batch_size: int, num_levels: int, num_q_heads: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype,
    device: torch.device,
) -> DecodeGraphShape:  # fmt: skip
    """Launch shape of a CUDA graph of `batch_size` decode rows with `num_levels` levels of segments.

    Fixed per batch size, so one graph per (bucket, levels) serves every grouping (no capture in the
    middle of a run): the large tile height, and split-K only where the shared programs of a full
    bucket grouped into whole tiles would leave SMs idle."""
    cfg = shared_prefix_config(num_q_heads, num_kv_heads, head_dim, dtype)
    group = num_q_heads // num_kv_heads
    s_block_m = max(16, next_pow2(group), cfg.shared_block_m)
    programs = cdiv(batch_size, s_block_m // group) * num_kv_heads
    splits = 1
    while splits < 16 and programs * splits * 2 <= num_sms(device):
        splits *= 2
    return DecodeGraphShape(num_levels, s_block_m, splits)


def decode_graph_tile_starts(
    shared: SharedPrefixMetadata, shape: DecodeGraphShape, group: int, num_slots: int, device: torch.device
) -> torch.Tensor:
    """First shared tile of each segment for a graph of `shape` with `num_slots` segment slots, then the
    real total repeated up to index num_slots (which the kernel reads as the tile count): [num_slots + 1]."""
    q_tokens = np.asarray(shared.seg_q_end_cpu, dtype=np.int64) - np.asarray(shared.seg_q_start_cpu, dtype=np.int64)
    starts = np.zeros(num_slots + 1, dtype=np.int32)
    np.cumsum(-(-q_tokens // (shape.s_block_m // group)), out=starts[1 : len(q_tokens) + 1])
    starts[len(q_tokens) + 1 :] = starts[len(q_tokens)]
    return to_device(starts, torch.int32, device)


def decode_graph_max_segments(batch_size: int, num_levels: int) -> int:
    """Segments a pure-decode batch can have: every segment has >= 2 members, a level's are disjoint."""
    return num_levels * (batch_size // 2)


def pin_decode_graph_plan(
    meta: AttentionMetadata, shape: DecodeGraphShape, seg_tile_start: torch.Tensor,
    num_q_heads: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype,
) -> None:  # fmt: skip
    """Fix the launch plan of a CUDA-graph batch: `meta` holds B decode rows and
    `decode_graph_max_segments(B, L)` segment slots, whose tile starts (one more entry) live in
    `seg_tile_start`, refilled before every replay; entries past the real segments repeat the real
    total, so the grid, sized for the most tiles such a batch can have, runs only the real ones."""
    cfg = shared_prefix_config(num_q_heads, num_kv_heads, head_dim, dtype)
    group = num_q_heads // num_kv_heads
    batch = meta.num_seqs
    s_block_q = shape.s_block_m // group
    max_tiles = shape.num_levels * (-(-batch // s_block_q) + batch // 2)
    e_block_m = max(cfg.extend_block_m, next_pow2(group))
    num_warps = cfg.num_warps or (8 if shape.s_block_m >= 128 else 4)
    plan = _Plan(
        seg_tile_start=seg_tile_start, num_seg_tiles=max_tiles, s_block_m=shape.s_block_m, s_block_q=s_block_q,
        splits=shape.splits, num_decodes=batch, n_extend_tiles=0, e_block_m=e_block_m, e_block_q=e_block_m // group,
        num_warps=num_warps, maxnreg=_maxnreg(cfg, num_warps), fully_covered=False,
    )  # fmt: skip
    key = (cfg, group, num_kv_heads, str(seg_tile_start.device), None)
    meta.shared.__dict__.setdefault("_triton_plans", {})[key] = plan


def shared_prefix_attention_triton(
    query: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    meta: AttentionMetadata,
    scale: float,
    out: torch.Tensor | None = None,
    *,
    cascade: bool = False,
    shared_splits: int | None = None,
    config: SharedPrefixConfig | None = None,
) -> torch.Tensor:
    """Prefix-shared attention of query [T, Hq, D] over the paged cache (new tokens' KV already
    written); same result as `paged_attention_reference`. Returns `out`.

    cascade: shared, distinct and merge as three separate launches (ablation of the fusion).
    shared_splits: pin the split-K factor of the shared tiles (None = heuristic).
    """
    shared = meta.shared
    if shared is None:
        raise ValueError("meta.shared is None: use paged_attention_triton")
    if out is None:
        out = torch.empty_like(query)
    _check_inputs(query, k_cache, v_cache, out)
    num_tokens, num_q_heads, head_dim = query.shape
    if meta.num_seqs == 0 or num_tokens == 0:
        return out
    num_kv_heads = k_cache.shape[2]
    group = num_q_heads // num_kv_heads
    cfg = config or shared_prefix_config(
        num_q_heads, num_kv_heads, head_dim, query.dtype, prefill_heavy=is_prefill_heavy(num_tokens, meta.num_seqs)
    )
    plan = _get_plan(meta, cfg, group, num_kv_heads, query.device, shared_splits)

    num_parts = shared.num_levels * plan.splits + 1
    part_out = torch.empty(num_parts, num_tokens, num_q_heads, head_dim, dtype=torch.float32, device=query.device)
    part_lse = torch.empty(num_parts, num_tokens, num_q_heads, dtype=torch.float32, device=query.device)
    if not plan.fully_covered:
        part_lse[: num_parts - 1].fill_(float("-inf"))

    n_shared = plan.num_seg_tiles * plan.splits * num_kv_heads
    n_decode = plan.num_decodes * num_kv_heads
    n_extend = plan.n_extend_tiles * num_kv_heads
    d_pad = max(16, next_pow2(head_dim))
    args = (
        query, k_cache, v_cache, part_out, part_lse,
        meta.query_start_loc, meta.seq_lens, meta.block_tables, shared.distinct_kv_start,
        plan.seg_tile_start, shared.seg_q_start, shared.seg_q_end, shared.seg_kv_start, shared.seg_kv_end,
        shared.seg_level, shared.seg_block_tables,
        query.stride(0), query.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        meta.block_tables.stride(0), shared.seg_block_tables.stride(0),
        part_out.stride(0), part_out.stride(1), part_out.stride(2),
        part_lse.stride(0), part_lse.stride(1), part_lse.stride(2),
        shared.num_segments, plan.splits, n_shared, n_decode, plan.num_decodes, meta.num_seqs,
    )  # fmt: skip
    constexprs = dict(
        G=group, HKV=num_kv_heads, PAGE=k_cache.shape[1], HEAD_DIM=head_dim, D_PAD=d_pad,
        S_BLOCK_M=plan.s_block_m, S_BLOCK_Q=plan.s_block_q, S_BLOCK_N=cfg.shared_block_n,
        D_BLOCK_M=max(16, next_pow2(group)), D_BLOCK_N=cfg.decode_block_n,
        E_BLOCK_M=plan.e_block_m, E_BLOCK_Q=plan.e_block_q, E_BLOCK_N=cfg.extend_block_n,
        UPCAST=upcast_dot(query.dtype), PRECISION=dot_precision(query.dtype), INTERPRET=is_interpreter(),
        num_stages=cfg.num_stages,
    )  # fmt: skip
    tail = (num_parts - 1, float(scale) * LOG2E)
    has = dict(HAS_SHARED=n_shared > 0, HAS_DECODE=n_decode > 0, HAS_EXTEND=n_extend > 0)
    if not cascade:
        total = n_shared + n_decode + n_extend
        if total:
            _shared_prefix_kernel[(total,)](
                *args, 0, *tail, **has, **constexprs, **_launch_opts(plan.num_warps, plan.maxnreg)
            )  # fmt: skip
    else:
        if n_shared:
            warps = cfg.num_warps or (8 if plan.s_block_m >= 128 else 4)
            _shared_prefix_kernel[(n_shared,)](
                *args, 0, *tail, HAS_SHARED=True, HAS_DECODE=False, HAS_EXTEND=False, **constexprs,
                **_launch_opts(warps, _maxnreg(cfg, warps)),
            )  # fmt: skip
        if n_decode + n_extend:
            warps = cfg.num_warps or (8 if n_extend and plan.e_block_m >= 128 else 4)
            _shared_prefix_kernel[(n_decode + n_extend,)](
                *args, n_shared, *tail, HAS_SHARED=False, HAS_DECODE=n_decode > 0, HAS_EXTEND=n_extend > 0,
                **constexprs, **_launch_opts(warps, _maxnreg(cfg, warps)),
            )  # fmt: skip

    h_block = min(next_pow2(num_q_heads), max(1, 4096 // d_pad))
    _merge_kernel[(num_tokens, cdiv(num_q_heads, h_block))](
        part_out, part_lse, out,
        part_out.stride(0), part_out.stride(1), part_out.stride(2),
        part_lse.stride(0), part_lse.stride(1), part_lse.stride(2),
        out.stride(0), out.stride(1), num_q_heads, num_parts,
        H_BLOCK=h_block, HEAD_DIM=head_dim, D_PAD=d_pad, INTERPRET=is_interpreter(), num_warps=4,
    )  # fmt: skip
    return out



def precompile_shared_prefix_kernels(
    num_q_heads: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype, device: torch.device, block_size: int
) -> int:
    """Launch every variant of the fused kernel an engine can hit (decode and prefill-heavy tile configs x
    2 shared tile heights x decode-only / extend-only / mixed regions) once on tiny batches, so that no
    batch shape pays a Triton JIT compile (seconds each) in the middle of a run. Returns the number of
    launches."""
    from batchllm.attention.shared_prefix_workload import PrefixNode, SeqSpec, make_shared_batch

    group = num_q_heads // num_kv_heads
    small_members = 2  # rows = 2 * G: the small tile height
    large_members = max(16, next_pow2(group)) // group + 1  # just over it: the large tile height
    decode_cfg = shared_prefix_config(num_q_heads, num_kv_heads, head_dim, dtype)
    prefill_cfg = shared_prefix_config(num_q_heads, num_kv_heads, head_dim, dtype, prefill_heavy=True)
    launches = 0
    for cfg in dict.fromkeys((decode_cfg, prefill_cfg)):
        for members in (small_members, large_members):
            for q_lens in ((1,) * members, (2,) * members, (1,) * (members - 1) + (2,)):
                if cfg != decode_cfg and max(q_lens) == 1:  # a decode-only batch is never prefill-heavy
                    continue
                nodes = [PrefixNode(-1, 2 * block_size)]
                seqs = [SeqSpec(0, q + 1, q) for q in q_lens]
                batch = make_shared_batch(nodes, seqs, num_q_heads, num_kv_heads, head_dim, dtype, device,
                                          block_size=block_size, poison=False, min_members=2)  # fmt: skip
                shared_prefix_attention_triton(batch.query, batch.k_cache, batch.v_cache, batch.meta, batch.scale,
                                               config=cfg)  # fmt: skip
                launches += 1
    return launches
