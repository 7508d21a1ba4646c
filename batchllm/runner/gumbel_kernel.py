"""The Triton kernel of ``gumbel_sampling.gumbel_argmax``: one program per row, streaming the vocabulary.

It reads each logit once and writes one token id per row: the noise is computed in registers, where the
loop it replaced wrote and read a [rows, vocab] noise tensor and a softmax besides.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from batchllm.runner.gumbel_sampling import _FMIX_1, _FMIX_2, _GOLDEN, _SEED_MIX, _STEP_MIX


@triton.jit
def _fmix32(x, c1, c2):
    x = x ^ (x >> 16)
    x = x * c1
    x = x ^ (x >> 13)
    x = x * c2
    return x ^ (x >> 16)


@triton.jit
def _gumbel_argmax_kernel(
    logits_ptr, stride, inv_t_ptr, lo_ptr, hi_ptr, step_ptr, out_ptr, vocab: tl.constexpr,
    # vocab is a constant: one compile per model (the interpreter cannot loop to a runtime bound)
    GOLDEN: tl.constexpr, STEP_MIX: tl.constexpr, SEED_MIX: tl.constexpr, FMIX_1: tl.constexpr,
    FMIX_2: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0).to(tl.int64)
    inv_t = tl.load(inv_t_ptr + row)
    zero = tl.zeros([BLOCK], dtype=tl.uint32)
    lo = tl.load(lo_ptr + row).to(tl.uint32)
    hi = tl.load(hi_ptr + row).to(tl.uint32)
    step = tl.load(step_ptr + row).to(tl.uint32)
    golden = zero + GOLDEN
    c1 = zero + FMIX_1
    c2 = zero + FMIX_2
    step_mix = (zero + step) * STEP_MIX
    seed_mix = (zero + hi) * SEED_MIX
    best = tl.full([BLOCK], float("-inf"), tl.float32)
    best_idx = tl.zeros([BLOCK], dtype=tl.int32)
    offs = tl.arange(0, BLOCK)
    for start in range(0, vocab, BLOCK):
        cols = start + offs
        ok = cols < vocab
        x = tl.load(logits_ptr + row * stride + cols, mask=ok, other=float("-inf")).to(tl.float32)
        h = (cols.to(tl.uint32) * golden) ^ step_mix ^ lo
        h = _fmix32(h, c1, c2) ^ seed_mix
        h = _fmix32(h, c1, c2)
        u = ((h >> 8).to(tl.float32) + 0.5) * (1.0 / 16777216.0)
        score = x * inv_t - tl.log(-tl.log(u))
        score = tl.where(ok, score, float("-inf"))
        better = score > best
        best = tl.where(better, score, best)
        best_idx = tl.where(better, cols, best_idx)
    top = tl.max(best, axis=0)
    token = tl.min(tl.where(best == top, best_idx, vocab), axis=0)  # the first of equal scores, as argmax
    tl.store(out_ptr + row, token.to(tl.int64))


def gumbel_argmax_triton(logits: torch.Tensor, inv_temperature: torch.Tensor, seed_lo: torch.Tensor,
                         seed_hi: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
    rows, vocab = logits.shape
    out = torch.zeros(rows, dtype=torch.int64, device=logits.device)
    if rows == 0:
        return out
    if logits.stride(-1) != 1:
        logits = logits.contiguous()
    _gumbel_argmax_kernel[(rows,)](
        logits, logits.stride(0), inv_temperature.float().contiguous(), seed_lo, seed_hi, step, out, vocab,
        GOLDEN=_GOLDEN, STEP_MIX=_STEP_MIX, SEED_MIX=_SEED_MIX, FMIX_1=_FMIX_1, FMIX_2=_FMIX_2, BLOCK=2048,
        num_warps=8,
    )
    return out
