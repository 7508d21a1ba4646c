"""Storing an iteration's keys and values into an FP8 paged cache: one Triton launch for both caches.

The PyTorch path (`attention/kv_store.write_kv_cache`, the reference and the bf16 path) quantizes K and V
in four elementwise kernels each (widen, divide by the head's scale, clamp, cast) and then index-puts the
bytes: ten launches per layer, 320 per iteration of llama-3.1-8b, against two for a bf16 cache. Here one
program per token reads its K and V rows, divides each head by its scale, clamps to +-448, rounds to e4m3
and writes both cache slots: the same bytes (tests/attention/test_fp8_kv_store.py) in one launch.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from batchllm.attention.triton.utils import is_interpreter, next_pow2, quantize_e4m3
from batchllm.kv_cache.fp8 import FP8_MAX, is_fp8, kv_scale


@triton.jit
def _store_head_rows(src_ptr, cache_ptr, scale_ptr, t, slot, stride_st, stride_sh, stride_cs, stride_ch,
                     num_heads, HEAD_DIM: tl.constexpr, H_BLOCK: tl.constexpr, D_PAD: tl.constexpr,
                     FP8_MAX: tl.constexpr, INTERPRET: tl.constexpr):  # fmt: skip
    heads = tl.arange(0, H_BLOCK)
    d = tl.arange(0, D_PAD)
    head_ok = heads < num_heads
    ok = head_ok[:, None] & (d < HEAD_DIM)[None, :]
    x = tl.load(src_ptr + t * stride_st + heads[:, None] * stride_sh + d[None, :], mask=ok, other=0.0)
    scale = tl.load(scale_ptr + heads, mask=head_ok, other=1.0)
    q = quantize_e4m3(x.to(tl.float32), scale[:, None], FP8_MAX, INTERPRET)
    tl.store(cache_ptr + slot * stride_cs + heads[:, None] * stride_ch + d[None, :],
             q.to(cache_ptr.dtype.element_ty), mask=ok)  # fmt: skip


@triton.jit
def _store_kv_fp8_kernel(
    key_ptr, value_ptr, k_cache, v_cache, slot_ptr, k_scale_ptr, v_scale_ptr,
    stride_kt, stride_kh, stride_vt, stride_vh, stride_cs, stride_ch, num_heads,
    HEAD_DIM: tl.constexpr, H_BLOCK: tl.constexpr, D_PAD: tl.constexpr, FP8_MAX: tl.constexpr,
    INTERPRET: tl.constexpr,
):  # fmt: skip
    t = tl.program_id(0).to(tl.int64)
    slot = tl.load(slot_ptr + t).to(tl.int64)
    _store_head_rows(key_ptr, k_cache, k_scale_ptr, t, slot, stride_kt, stride_kh, stride_cs, stride_ch, num_heads,
                     HEAD_DIM, H_BLOCK, D_PAD, FP8_MAX, INTERPRET)  # fmt: skip
    _store_head_rows(value_ptr, v_cache, v_scale_ptr, t, slot, stride_vt, stride_vh, stride_cs, stride_ch,
                     num_heads, HEAD_DIM, H_BLOCK, D_PAD, FP8_MAX, INTERPRET)  # fmt: skip


def store_kv_fp8(
    key: torch.Tensor, value: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, slot_mapping: torch.Tensor
) -> None:
    """key, value [T, Hkv, D] into FP8 caches [blocks, block_size, Hkv, D] at `slot_mapping` [T] (a slot is
    block * block_size + offset), each head divided by its cache's scale (`kv_cache.fp8.kv_scale`)."""
    if not (is_fp8(k_cache.dtype) and k_cache.dtype == v_cache.dtype and k_cache.shape == v_cache.shape):
        raise ValueError("store_kv_fp8 needs two FP8 caches of one shape")
    if k_cache.stride() != v_cache.stride() or k_cache.stride(-1) != 1 or key.stride(-1) != 1 or value.stride(-1) != 1:
        raise ValueError("store_kv_fp8 needs caches of one layout and head dims contiguous")
    tokens, num_heads, head_dim = key.shape
    if tokens == 0:
        return
    # Slot s of a [blocks, block_size, H, D] cache starts at s * stride(1): blocks are whole block_size runs.
    if k_cache.stride(0) != k_cache.shape[1] * k_cache.stride(1):
        raise ValueError("store_kv_fp8 needs each cache block's slots contiguous")
    _store_kv_fp8_kernel[(tokens,)](
        key, value, k_cache, v_cache, slot_mapping, kv_scale(k_cache), kv_scale(v_cache),
        key.stride(0), key.stride(1), value.stride(0), value.stride(1), k_cache.stride(1), k_cache.stride(2),
        num_heads, HEAD_DIM=head_dim, H_BLOCK=next_pow2(num_heads), D_PAD=next_pow2(head_dim), FP8_MAX=FP8_MAX,
        INTERPRET=is_interpreter(), num_warps=4,
    )  # fmt: skip
