"""The online-softmax loop over paged KV tiles, shared by the paged and the prefix-shared kernels.

An FP8 cache is read in one of three ways (KV_FP8, see `utils.kv_scale_args`):

* KV_FP8 = KV_WIDEN: widened to the query's dtype in registers right after each load (exact: every
  e4m3 value is a bf16 / fp16 / fp32 value; a bf16 query is taken to fp16 for it, see attend_kv_range);
  the dots run at the 16-bit rate and the result equals dequantize-then-attend.
* KV_FP8 = KV_FP8_DOTS: both dots on FP8 tensor cores, as vLLM's and FlashAttention-3's FP8 attention do.
  The query is quantized per row (scale amax / 448) once per program; the softmax weights p, computed in
  fp32, are taken to e4m3 for the P.V dot as p * 2^8 (so that they stay normal down to 2^-14 instead of
  going subnormal below 2^-6; <= 256 fits e4m3's 448), and the 2^8 is taken back out of the running max
  at the end. The sum l is over the unrounded p. Not exact: each q element and each p carries e4m3's
  relative rounding (<= 2^-4); tests bound the effect.
* KV_FP8 = KV_FP8_QK: the q.K^T dot on FP8 tensor cores (q quantized per row as above, K straight from
  the FP8 tile), P.V as in KV_WIDEN (V widened to fp16, p unrounded). Why: an FP8 wgmma operand must be
  K-major, which K is (head_dim contiguous) and V is not, so this drops K's widening without the
  transposed V copy that FP8 dots pay; only q carries e4m3's rounding.

Either way the per-head scales are applied outside the tile loop: the K scale folded into the score
scale, the V scale into the accumulator at the end (no multiply per KV element).
"""

from __future__ import annotations

import triton
import triton.language as tl

from batchllm.attention.triton.utils import KV_FP8_DOTS, KV_FP8_QK, dot_acc, quantize_e4m3, round_to_e4m3
from batchllm.kv_cache.fp8 import FP8_MAX

# Finite "minus infinity" for the running max: an all-masked row then gives exp2(-inf - m) = 0 and
# alpha = exp2(0) = 1 instead of NaN from (-inf) - (-inf).
NEG_BIG = tl.constexpr(-1.0e30)
# log2 of the factor the softmax weights carry into an FP8 P.V dot (see the module docstring).
P_FP8_SHIFT = tl.constexpr(8.0)
E4M3_MAX = tl.constexpr(FP8_MAX)
FP8_DOTS = tl.constexpr(KV_FP8_DOTS)  # the host's mode value, as the kernels may read only constexpr globals
FP8_QK = tl.constexpr(KV_FP8_QK)


@triton.jit
def kv_step(
    acc, m_i, l_i, q, q_pos, tok0, kv_hi,
    k_cache, v_cache, bt_row, koff, voff, stride_kb, stride_kt, stride_vb, stride_vt, qk_scale,
    PAGE: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr,
    MASKED: tl.constexpr, CAUSAL: tl.constexpr, KV_FP8: tl.constexpr, UPCAST: tl.constexpr,
    PRECISION: tl.constexpr, INTERPRET: tl.constexpr,
):  # fmt: skip
    """Online-softmax step over KV tokens [tok0, tok0 + BLOCK_N) of block table `bt_row`.

    MASKED=False only for tiles every row fully sees (all tokens < kv_hi and, if CAUSAL, <= q_pos).
    """
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D_PAD)
    d_ok = offs_d < HEAD_DIM
    tok = tok0 + offs_n
    if MASKED:
        tok_ok = tok < kv_hi
        page = tl.load(bt_row + tok // PAGE, mask=tok_ok, other=0).to(tl.int64)
        kv_mask = tok_ok[:, None] & d_ok[None, :]
    else:
        page = tl.load(bt_row + tok // PAGE).to(tl.int64)
        kv_mask = d_ok[None, :]
    in_page = tok % PAGE
    k = tl.load(
        k_cache + (page * stride_kb + in_page * stride_kt + koff)[:, None] + offs_d[None, :], mask=kv_mask, other=0.0
    ).to(q.dtype)  # a no-op unless the cache is FP8 and is widened
    s = tl.zeros([q.shape[0], BLOCK_N], dtype=tl.float32)
    s = dot_acc(q, tl.trans(k), s, UPCAST, PRECISION) * qk_scale
    if MASKED:
        if CAUSAL:
            keep = (tok[None, :] <= q_pos[:, None]) & tok_ok[None, :]
        else:
            keep = tok_ok[None, :]
        s = tl.where(keep, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    alpha = tl.exp2(m_i - m_new)
    if KV_FP8 == FP8_DOTS:
        p = tl.exp2(s - m_new[:, None] + P_FP8_SHIFT)
    else:
        p = tl.exp2(s - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    v = tl.load(
        v_cache + (page * stride_vb + in_page * stride_vt + voff)[:, None] + offs_d[None, :], mask=kv_mask, other=0.0
    )
    if KV_FP8 == FP8_QK:
        acc = dot_acc(p.to(tl.float16), v.to(tl.float16), acc * alpha[:, None], UPCAST, PRECISION)
    else:
        if KV_FP8 == FP8_DOTS and INTERPRET:
            p = round_to_e4m3(p)  # the GPU's cast rounds to nearest, the interpreter's does not
        acc = dot_acc(p.to(q.dtype), v.to(q.dtype), acc * alpha[:, None], UPCAST, PRECISION)
    return acc, m_new, l_i


@triton.jit
def kv_steps(
    acc, m_i, l_i, q, q_pos, kv_lo, kv_hi, tile_lo, tile_hi,
    k_cache, v_cache, bt_row, koff, voff, stride_kb, stride_kt, stride_vb, stride_vt, qk_scale,
    PAGE: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr,
    MASKED: tl.constexpr, CAUSAL: tl.constexpr, KV_FP8: tl.constexpr, UPCAST: tl.constexpr,
    PRECISION: tl.constexpr, INTERPRET: tl.constexpr,
):  # fmt: skip
    """KV tiles [tile_lo, tile_hi), tile j = tokens kv_lo + j * BLOCK_N + [0, BLOCK_N)."""
    if INTERPRET:
        # The interpreter cannot range() over runtime scalars with NumPy >= 2.4 (triton#9171); the
        # GPU keeps scf.for so that num_stages software pipelining applies.
        j = tile_lo
        while j < tile_hi:
            acc, m_i, l_i = kv_step(
                acc, m_i, l_i, q, q_pos, kv_lo + j * BLOCK_N, kv_hi, k_cache, v_cache, bt_row, koff, voff,
                stride_kb, stride_kt, stride_vb, stride_vt, qk_scale,
                PAGE, BLOCK_N, HEAD_DIM, D_PAD, MASKED, CAUSAL, KV_FP8, UPCAST, PRECISION, INTERPRET,
            )  # fmt: skip
            j += 1
    else:
        for j in range(tile_lo, tile_hi):
            acc, m_i, l_i = kv_step(
                acc, m_i, l_i, q, q_pos, kv_lo + j * BLOCK_N, kv_hi, k_cache, v_cache, bt_row, koff, voff,
                stride_kb, stride_kt, stride_vb, stride_vt, qk_scale,
                PAGE, BLOCK_N, HEAD_DIM, D_PAD, MASKED, CAUSAL, KV_FP8, UPCAST, PRECISION, INTERPRET,
            )  # fmt: skip
    return acc, m_i, l_i


@triton.jit
def attend_kv_range(
    q, q_pos, kv_lo, kv_hi, tile_lo, tile_hi, n_full, k_cache, v_cache, k_scale_ptr, v_scale_ptr, bt_row, kvh,
    stride_kb, stride_kt, stride_kh, stride_vb, stride_vt, stride_vh, qk_scale,
    PAGE: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr,
    CAUSAL: tl.constexpr, KV_FP8: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
    INTERPRET: tl.constexpr,
):  # fmt: skip
    """(acc, m, l) of q's rows over KV tiles [tile_lo, tile_hi) of KV head kvh: tiles below n_full are
    seen whole by every row and run unmasked, the rest masked (bounds, and causality if CAUSAL).
    KV_FP8 != 0: the caches are float8_e4m3fn with per-head scales at k_scale_ptr / v_scale_ptr, read as
    the module docstring says."""
    if KV_FP8 == FP8_DOTS or KV_FP8 == FP8_QK:
        qf = q.to(tl.float32)
        q_scale = tl.maximum(tl.max(tl.abs(qf), 1), 1e-30) / E4M3_MAX
        q = quantize_e4m3(qf, q_scale[:, None], E4M3_MAX, INTERPRET).to(tl.float8e4nv)
        qk_scale = (qk_scale * tl.load(k_scale_ptr + kvh) * q_scale)[:, None]
    elif KV_FP8:
        qk_scale = qk_scale * tl.load(k_scale_ptr + kvh)
        if q.dtype == tl.bfloat16:
            # e4m3 -> fp16 is one native conversion on sm_89+ (-> bf16 is several): so the dots run in
            # fp16 (as exact for e4m3 and for p in [0, 1]); q saturates at fp16's range instead of overflowing.
            q = tl.clamp(q.to(tl.float32), -65504.0, 65504.0).to(tl.float16)
    acc = tl.zeros([q.shape[0], D_PAD], dtype=tl.float32)
    m_i = tl.full([q.shape[0]], NEG_BIG, dtype=tl.float32)
    l_i = tl.zeros([q.shape[0]], dtype=tl.float32)
    koff = kvh.to(tl.int64) * stride_kh
    voff = kvh.to(tl.int64) * stride_vh
    acc, m_i, l_i = kv_steps(
        acc, m_i, l_i, q, q_pos, kv_lo, kv_hi, tile_lo, tl.minimum(tile_hi, n_full),
        k_cache, v_cache, bt_row, koff, voff, stride_kb, stride_kt, stride_vb, stride_vt, qk_scale,
        PAGE, BLOCK_N, HEAD_DIM, D_PAD, False, CAUSAL, KV_FP8, UPCAST, PRECISION, INTERPRET,
    )  # fmt: skip
    acc, m_i, l_i = kv_steps(
        acc, m_i, l_i, q, q_pos, kv_lo, kv_hi, tl.maximum(tile_lo, n_full), tile_hi,
        k_cache, v_cache, bt_row, koff, voff, stride_kb, stride_kt, stride_vb, stride_vt, qk_scale,
        PAGE, BLOCK_N, HEAD_DIM, D_PAD, True, CAUSAL, KV_FP8, UPCAST, PRECISION, INTERPRET,
    )  # fmt: skip
    if KV_FP8:
        acc = acc * tl.load(v_scale_ptr + kvh)  # softmax (m, l) does not depend on V's scale
    if KV_FP8 == FP8_DOTS:
        m_i = m_i - P_FP8_SHIFT  # l and acc carry 2^P_FP8_SHIFT: l * 2^m is the softmax's sum again
    return acc, m_i, l_i
