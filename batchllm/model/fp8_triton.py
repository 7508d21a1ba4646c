"""Per-token FP8 quantization of activations as one Triton kernel (the GPU path of `fp8.quantize_per_token`).

In PyTorch ops the rule of `fp8.quantize_rows` is five passes over [tokens, K] (abs, amax, divide, clamp,
cast); at prefill sizes that costs a third of the FP8 GEMM it feeds. Here each program takes one row: a first
loop finds its amax, a second (reading the row again, mostly from L2) writes the e4m3 values, and the
row's scale is stored once. The arithmetic is the reference's: fp32, a correctly rounded division, clamp to
+-448, then a round-to-nearest cast.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from batchllm.attention.triton.utils import is_interpreter, next_pow2
from batchllm.kv_cache.fp8 import FP8_MAX


@triton.jit
def _round_to_e4m3(v):
    """v (fp32, |v| <= 448) rounded to nearest even on the e4m3 grid, in fp32 arithmetic. Only under the
    interpreter, whose float -> fp8 cast does not round to nearest (125.6 gives 64, not 128; 0.00104 gives
    0, not 2^-9); the GPU's cast does. Normals keep 3 of fp32's 23 mantissa bits; below 2^-6
    (e4m3 subnormals) the step is 2^-9, which adding and subtracting 2^14 rounds to."""
    bits = v.to(tl.int32, bitcast=True)
    normal = ((bits + 0x7FFFF + ((bits >> 20) & 1)) & -1048576).to(tl.float32, bitcast=True)
    big = tl.full(v.shape, 16384.0, tl.float32)  # a tensor, not a scalar: the interpreter adds those in fp64
    magnitude = (tl.abs(v) + big) - big  # of |v|: just below 2^14 the fp32 step halves
    subnormal = tl.where(bits < 0, -magnitude, magnitude)
    return tl.where(tl.abs(v) < 0.015625, subnormal, normal)


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
        q = tl.minimum(tl.maximum(tl.math.div_rn(x, scale), -FP8_MAX), FP8_MAX)
        if INTERPRET:
            q = _round_to_e4m3(q)
        tl.store(q_ptr + row * stride_q + cols, q.to(q_ptr.dtype.element_ty), mask=ok)
    tl.store(scale_ptr + row, scale)


def per_token_quant_fp8(x: torch.Tensor, min_amax: float) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] (rows contiguous in K) -> (float8_e4m3fn [M, K], fp32 scales [M, 1])."""
    rows, n = x.shape
    if x.stride(-1) != 1:
        x = x.contiguous()
    q = torch.empty(rows, n, dtype=torch.float8_e4m3fn, device=x.device)
    scale = torch.empty(rows, 1, dtype=torch.float32, device=x.device)
    if rows == 0:
        return q, scale
    block = min(2048, next_pow2(n))
    _per_token_quant_kernel[(rows,)](
        x, q, scale, x.stride(0), q.stride(0), n, min_amax, FP8_MAX=FP8_MAX, BLOCK=block,
        NUM_BLOCKS=triton.cdiv(n, block),
        INTERPRET=is_interpreter(),
        num_warps=min(8, max(1, block // 256)),
    )  # fmt: skip
    return q, scale
