"""Per-token FP8 quantization of activations in Triton (the GPU path of `fp8.quantize_per_token`), alone or
fused into the kernel that produces the activations (`rms_norm_fp8`, `silu_and_mul_fp8`).

In PyTorch ops the rule of `fp8.quantize_rows` is five passes over [tokens, K] (abs, amax, divide, clamp,
cast); at prefill sizes that costs a third of the FP8 GEMM it feeds. Here each program takes one row: a first
loop finds its amax, a second (reading the row again, mostly from L2) writes the e4m3 values, and the
row's scale is stored once. The arithmetic is the reference's: fp32, a correctly rounded division, clamp to
+-448, then a round-to-nearest cast.

Fused, the producer's output is rounded to the activation dtype exactly as its plain kernel stores it, then
quantized by the same rule: the FP8 values and scales equal those of the plain kernel followed by
`per_token_quant_fp8`, bit for bit, while the bf16 activations are never written to memory and read back
(per token and layer of llama-3.1-8b, 4096 x 2 x 2 bytes after each norm and 14336 x 2 x 2 after SiLU-mul),
and two launches of the layer's ~10 go.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from batchllm.attention.triton.utils import is_interpreter, next_pow2, quantize_e4m3
from batchllm.kv_cache.fp8 import FP8_MAX
from batchllm.model.triton_ops import rms_normed_row, silu_and_mul_values


@triton.jit
def _per_token_quant_kernel(
    x_ptr, q_ptr, scale_ptr, stride_x, stride_q, n_cols, min_amax, FP8_MAX: tl.constexpr, BLOCK: tl.constexpr,
    NUM_BLOCKS: tl.constexpr, INTERPRET: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + row * stride_x
    amax = tl.zeros([BLOCK], dtype=tl.float32)
    # A constexpr trip count (n_cols // BLOCK rounded up): the interpreter cannot range() over runtime
    # scalars with NumPy >= 2.4 (triton#9171), and there are only a few distinct K per model.
    for i in range(NUM_BLOCKS):
        cols = i * BLOCK + tl.arange(0, BLOCK)
        x = tl.load(x_row + cols, mask=cols < n_cols, other=0.0).to(tl.float32)
        amax = tl.maximum(amax, tl.abs(x))
    scale = tl.maximum(tl.max(amax, axis=0), min_amax) / FP8_MAX
    for i in range(NUM_BLOCKS):
        cols = i * BLOCK + tl.arange(0, BLOCK)
        ok = cols < n_cols
        x = tl.load(x_row + cols, mask=ok, other=0.0).to(tl.float32)
        q = quantize_e4m3(x, scale, FP8_MAX, INTERPRET)
        tl.store(q_ptr + row * stride_q + cols, q.to(q_ptr.dtype.element_ty), mask=ok)
    tl.store(scale_ptr + row, scale)


@triton.jit
def _rms_norm_fp8_kernel(
    x_ptr, res_ptr, w_ptr, q_ptr, scale_ptr, stride_x, stride_r, stride_q, n_cols, eps, min_amax,
    HAS_RESIDUAL: tl.constexpr, FP8_MAX: tl.constexpr, BLOCK: tl.constexpr, INTERPRET: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    ok = cols < n_cols
    h = rms_normed_row(x_ptr, res_ptr, row, stride_x, stride_r, cols, ok, n_cols, eps, HAS_RESIDUAL)
    w = tl.load(w_ptr + cols, mask=ok, other=0.0)
    out = (w.to(tl.float32) * h.to(tl.float32)).to(h.dtype).to(tl.float32)  # what rms_norm would store
    scale = tl.maximum(tl.max(tl.abs(out), axis=0), min_amax) / FP8_MAX
    q = quantize_e4m3(out, scale, FP8_MAX, INTERPRET)
    tl.store(q_ptr + row * stride_q + cols, q.to(q_ptr.dtype.element_ty), mask=ok)
    tl.store(scale_ptr + row, scale)


@triton.jit
def _silu_and_mul_fp8_kernel(
    x_ptr, q_ptr, scale_ptr, stride_x, stride_q, n_cols, min_amax, FP8_MAX: tl.constexpr, BLOCK: tl.constexpr,
    NUM_BLOCKS: tl.constexpr, INTERPRET: tl.constexpr,
):  # fmt: skip
    # Two passes over the row, as the plain quantizer: the second recomputes the product from gate and up
    # (read again, mostly from L2) instead of storing it.
    row = tl.program_id(0).to(tl.int64)
    amax = tl.zeros([BLOCK], dtype=tl.float32)
    for i in range(NUM_BLOCKS):
        cols = i * BLOCK + tl.arange(0, BLOCK)
        ok = cols < n_cols
        out = silu_and_mul_values(x_ptr, row, stride_x, n_cols, cols, ok).to(x_ptr.dtype.element_ty)
        amax = tl.maximum(amax, tl.abs(out.to(tl.float32)))
    scale = tl.maximum(tl.max(amax, axis=0), min_amax) / FP8_MAX
    for i in range(NUM_BLOCKS):
        cols = i * BLOCK + tl.arange(0, BLOCK)
        ok = cols < n_cols
        out = silu_and_mul_values(x_ptr, row, stride_x, n_cols, cols, ok).to(x_ptr.dtype.element_ty)
        q = quantize_e4m3(out.to(tl.float32), scale, FP8_MAX, INTERPRET)
        tl.store(q_ptr + row * stride_q + cols, q.to(q_ptr.dtype.element_ty), mask=ok)
    tl.store(scale_ptr + row, scale)


def _empty_quantized(rows: int, n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    return (torch.empty(rows, n, dtype=torch.float8_e4m3fn, device=device),
            torch.empty(rows, 1, dtype=torch.float32, device=device))  # fmt: skip


def _row_blocks(n: int) -> tuple[int, int]:
    block = min(2048, next_pow2(n))
    return block, triton.cdiv(n, block)


def per_token_quant_fp8(x: torch.Tensor, min_amax: float) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] (rows contiguous in K) -> (float8_e4m3fn [M, K], fp32 scales [M, 1])."""
    rows, n = x.shape
    if x.stride(-1) != 1:
        x = x.contiguous()
    q, scale = _empty_quantized(rows, n, x.device)
    if rows == 0:
        return q, scale
    block, num_blocks = _row_blocks(n)
    _per_token_quant_kernel[(rows,)](
        x, q, scale, x.stride(0), q.stride(0), n, min_amax, FP8_MAX=FP8_MAX, BLOCK=block, NUM_BLOCKS=num_blocks,
        INTERPRET=is_interpreter(), num_warps=min(8, max(1, block // 256)),
    )  # fmt: skip
    return q, scale


def rms_norm_fp8(
    x: torch.Tensor, weight: torch.Tensor, eps: float, min_amax: float, residual: Optional[torch.Tensor] = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """`triton_ops.rms_norm(x, weight, eps, residual)` quantized per token: (float8_e4m3fn [T, N], fp32 scales
    [T, 1]); with `residual`, x + residual is written back into it as rms_norm does. x [T, N], weight [N] in
    the same dtype (the rounding before the quantizer is to that dtype)."""
    rows, n = x.shape
    if x.stride(-1) != 1 or weight.dtype != x.dtype:
        raise ValueError("rms_norm_fp8 needs rows contiguous in their last axis and the weight in x's dtype")
    q, scale = _empty_quantized(rows, n, x.device)
    if rows == 0:
        return q, scale
    res = residual if residual is not None else x
    block = next_pow2(n)
    _rms_norm_fp8_kernel[(rows,)](
        x, res, weight, q, scale, x.stride(0), res.stride(0), q.stride(0), n, eps, min_amax,
        HAS_RESIDUAL=residual is not None, FP8_MAX=FP8_MAX, BLOCK=block, INTERPRET=is_interpreter(),
        num_warps=min(16, max(1, block // 256)),
    )  # fmt: skip
    return q, scale


def silu_and_mul_fp8(gate_up: torch.Tensor, min_amax: float) -> tuple[torch.Tensor, torch.Tensor]:
    """`triton_ops.silu_and_mul(gate_up)` quantized per token: gate_up [T, 2N] -> (float8_e4m3fn [T, N],
    fp32 scales [T, 1])."""
    rows, two_n = gate_up.shape
    n = two_n // 2
    if gate_up.stride(-1) != 1:
        raise ValueError("silu_and_mul_fp8 needs rows contiguous in their last axis")
    q, scale = _empty_quantized(rows, n, gate_up.device)
    if rows == 0:
        return q, scale
    block, num_blocks = _row_blocks(n)
    _silu_and_mul_fp8_kernel[(rows,)](
        gate_up, q, scale, gate_up.stride(0), q.stride(0), n, min_amax, FP8_MAX=FP8_MAX, BLOCK=block,
        NUM_BLOCKS=num_blocks, INTERPRET=is_interpreter(), num_warps=min(8, max(1, block // 256)),
    )  # fmt: skip
    return q, scale
