"""Fused Triton kernels for the elementwise parts of a decoder layer (GPU fast path).

Unfused, each RMSNorm, rotary embedding and SwiGLU activation is 5-10 PyTorch kernels, each a full
pass over [tokens, hidden] in HBM; in a prefill iteration they took a third of the GPU time. Each
kernel here is one pass. They reproduce the PyTorch ops of `layers.py` (the reference, which follows
transformers' op order) including the rounding to the activation dtype between ops, so bf16 results
stay within a rounding step of the unfused path:

* `rms_norm(x, weight, eps, residual=None)`: with a residual, first residual <- x + residual (in
  place, as vLLM's fused_add_rms_norm), then normalise the sum.
* `rotary_embedding_(positions, q, k, cos_cache, sin_cache)`: neox-style rotation of q and k in place.
* `silu_and_mul(gate_up)`: silu(gate) * up over the two halves of the fused gate/up projection.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from batchllm.attention.triton.utils import next_pow2


@triton.jit
def rms_normed_row(x_ptr, res_ptr, row, stride_x, stride_r, cols, ok, n_cols, eps, HAS_RESIDUAL: tl.constexpr):
    """One row normalised (before the weight), in the activation dtype; with a residual, of x + residual,
    which is written back. Shared by the plain and the FP8-output kernels, so both round alike."""
    x = tl.load(x_ptr + row * stride_x + cols, mask=ok, other=0.0)
    if HAS_RESIDUAL:
        r = tl.load(res_ptr + row * stride_r + cols, mask=ok, other=0.0)
        x = (x.to(tl.float32) + r.to(tl.float32)).to(r.dtype)  # the sum, rounded as a PyTorch add
        tl.store(res_ptr + row * stride_r + cols, x, mask=ok)
    h = x.to(tl.float32)
    var = tl.sum(h * h, axis=0) / n_cols
    return (h * (1.0 / tl.sqrt_rn(var + eps))).to(x.dtype)  # normalised in fp32, cast back (as transformers)


@triton.jit
def _rms_norm_kernel(
    x_ptr, res_ptr, w_ptr, out_ptr, stride_x, stride_r, stride_o, n_cols, eps,
    HAS_RESIDUAL: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    ok = cols < n_cols
    h = rms_normed_row(x_ptr, res_ptr, row, stride_x, stride_r, cols, ok, n_cols, eps, HAS_RESIDUAL)
    w = tl.load(w_ptr + cols, mask=ok, other=0.0)
    out = (w.to(tl.float32) * h.to(tl.float32)).to(out_ptr.dtype.element_ty)
    tl.store(out_ptr + row * stride_o + cols, out, mask=ok)


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """RMSNorm of each row of x [T, N]; with `residual` [T, N], of x + residual, which is also
    written back into `residual`."""
    n = x.shape[-1]
    x2 = x.reshape(-1, n)
    if x2.stride(-1) != 1:
        raise ValueError("rms_norm needs rows contiguous in their last axis")
    out = torch.empty(x2.shape, dtype=torch.promote_types(weight.dtype, x.dtype), device=x.device)
    rows = x2.shape[0]
    if rows == 0:
        return out.view(x.shape)
    res2 = residual.view(-1, n) if residual is not None else x2
    block = next_pow2(n)
    _rms_norm_kernel[(rows,)](
        x2, res2, weight, out, x2.stride(0), res2.stride(0), out.stride(0), n, eps,
        HAS_RESIDUAL=residual is not None, BLOCK=block, num_warps=min(16, max(1, block // 256)),
    )  # fmt: skip
    return out.view(x.shape)


@triton.jit
def silu_and_mul_values(x_ptr, row, stride_x, n_cols, cols, ok):
    """silu(gate) * up for some columns of one row, in fp32 (the silu rounded to the dtype first, as
    PyTorch's silu output is); the caller rounds the product."""
    gate = tl.load(x_ptr + row * stride_x + cols, mask=ok, other=0.0)
    up = tl.load(x_ptr + row * stride_x + n_cols + cols, mask=ok, other=0.0)
    g = gate.to(tl.float32)
    act = (g / (1.0 + tl.exp(-g))).to(gate.dtype)
    return act.to(tl.float32) * up.to(tl.float32)


@triton.jit
def _silu_and_mul_kernel(x_ptr, out_ptr, stride_x, stride_o, n_cols, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    ok = cols < n_cols
    out = silu_and_mul_values(x_ptr, row, stride_x, n_cols, cols, ok).to(out_ptr.dtype.element_ty)
    tl.store(out_ptr + row * stride_o + cols, out, mask=ok)


def silu_and_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """silu(gate_up[:, :N]) * gate_up[:, N:] for gate_up [T, 2N]."""
    rows, two_n = gate_up.shape
    n = two_n // 2
    if gate_up.stride(-1) != 1:
        raise ValueError("silu_and_mul needs rows contiguous in their last axis")
    out = torch.empty(rows, n, dtype=gate_up.dtype, device=gate_up.device)
    if rows == 0:
        return out
    block = min(1024, next_pow2(n))
    _silu_and_mul_kernel[(rows, triton.cdiv(n, block))](
        gate_up, out, gate_up.stride(0), out.stride(0), n, BLOCK=block, num_warps=4
    )  # fmt: skip
    return out


@triton.jit
def _rotate_heads(
    x_ptr, row, stride_t, stride_h, num_heads, c, s, H_BLOCK: tl.constexpr, HALF: tl.constexpr
):  # fmt: skip
    """x[row, :, :HALF], x[row, :, HALF:] <- x1 c - x2 s, x2 c + x1 s (each product and sum rounded to
    the dtype, as the PyTorch expression q * cos + rotate_half(q) * sin computes it)."""
    heads = tl.arange(0, H_BLOCK)
    d = tl.arange(0, HALF)
    ok = (heads < num_heads)[:, None]
    base = x_ptr + row * stride_t + (heads * stride_h)[:, None] + d[None, :]
    x1 = tl.load(base, mask=ok, other=0.0)
    x2 = tl.load(base + HALF, mask=ok, other=0.0)
    dt = x1.dtype
    f1, f2 = x1.to(tl.float32), x2.to(tl.float32)
    c32, s32 = c.to(dt).to(tl.float32)[None, :], s.to(dt).to(tl.float32)[None, :]
    o1 = ((f1 * c32).to(dt).to(tl.float32) + (-f2 * s32).to(dt).to(tl.float32)).to(dt)
    o2 = ((f2 * c32).to(dt).to(tl.float32) + (f1 * s32).to(dt).to(tl.float32)).to(dt)
    tl.store(base, o1, mask=ok)
    tl.store(base + HALF, o2, mask=ok)


@triton.jit
def _rope_kernel(
    q_ptr, k_ptr, pos_ptr, cos_ptr, sin_ptr, stride_qt, stride_qh, stride_kt, stride_kh, stride_cos,
    num_q_heads, num_kv_heads, QH_BLOCK: tl.constexpr, KH_BLOCK: tl.constexpr, HALF: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0).to(tl.int64)
    pos = tl.load(pos_ptr + row).to(tl.int64)
    d = tl.arange(0, HALF)
    # neox tables repeat their first half (cat(freqs, freqs)): one half serves both
    c = tl.load(cos_ptr + pos * stride_cos + d)
    s = tl.load(sin_ptr + pos * stride_cos + d)
    _rotate_heads(q_ptr, row, stride_qt, stride_qh, num_q_heads, c, s, QH_BLOCK, HALF)
    _rotate_heads(k_ptr, row, stride_kt, stride_kh, num_kv_heads, c, s, KH_BLOCK, HALF)


def rotary_embedding_(
    positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor, cos_cache: torch.Tensor, sin_cache: torch.Tensor
) -> None:
    """Rotate q [T, Hq, D] and k [T, Hkv, D] in place by positions [T] (neox style, fp32 tables [P, D])."""
    tokens, num_q_heads, head_dim = q.shape
    half = head_dim // 2
    if q.stride(-1) != 1 or k.stride(-1) != 1 or cos_cache.stride(-1) != 1 or half != next_pow2(half):
        raise ValueError("rotary_embedding_ needs contiguous head dims of a power-of-two half")
    if tokens == 0:
        return
    _rope_kernel[(tokens,)](
        q, k, positions, cos_cache, sin_cache, q.stride(0), q.stride(1), k.stride(0), k.stride(1),
        cos_cache.stride(0), num_q_heads, k.shape[1],
        QH_BLOCK=next_pow2(num_q_heads), KH_BLOCK=next_pow2(k.shape[1]), HALF=half, num_warps=4,
    )  # fmt: skip
