"""Small helpers shared by the Triton attention kernels (host side and @triton.jit device side)."""

from __future__ import annotations

import functools
import os

import numpy as np
import torch
import triton
import triton.language as tl

from batchllm.kv_cache.fp8 import is_fp8, kv_scale

LOG2E = 1.4426950408889634  # scores are scaled by scale * log2(e) so the online softmax can use exp2


def is_interpreter() -> bool:
    """True when Triton runs kernels in its NumPy interpreter (CPU tests)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def next_pow2(x: int) -> int:
    return 1 if x <= 1 else 1 << (x - 1).bit_length()


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


@functools.lru_cache(maxsize=None)
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def num_sms(device: torch.device) -> int:
    """Streaming multiprocessors on `device`; a small stand-in on CPU so heuristics stay testable."""
    if device.type != "cuda":
        return 4
    return _sm_count(device.index if device.index is not None else torch.cuda.current_device())


def upcast_dot(dtype: torch.dtype) -> bool:
    """The interpreter's tl.dot multiplies bf16 *bit patterns* (stored as uint16), so upcast there."""
    return is_interpreter() and dtype == torch.bfloat16


def dot_precision(dtype: torch.dtype) -> str:
    """fp32 inputs: exact fp32 products (the default tf32 would lose ~3 digits); 16-bit: tensor cores."""
    return "ieee" if dtype == torch.float32 else "tf32"


def num_leading_decodes(query_start_loc: list[int]) -> int:
    """Sequences at the head of the batch with q_len == 1 (engines put decodes first)."""
    q_lens = np.diff(np.asarray(query_start_loc, dtype=np.int64))
    not_decode = np.flatnonzero(q_lens != 1)
    return int(not_decode[0]) if len(not_decode) else len(q_lens)


def check_inputs(query: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, out: torch.Tensor) -> None:
    """The shapes, dtypes and strides every attention kernel expects; ValueError otherwise."""
    if query.dim() != 3 or k_cache.dim() != 4 or k_cache.shape != v_cache.shape:
        raise ValueError(f"bad shapes: query {tuple(query.shape)}, k_cache {tuple(k_cache.shape)}, v_cache {tuple(v_cache.shape)}")
    if query.shape[2] != k_cache.shape[3] or query.shape[1] % k_cache.shape[2] != 0:
        raise ValueError("query heads must be a multiple of KV heads and head dims must match")
    if query.dtype != out.dtype or k_cache.dtype != v_cache.dtype:
        raise ValueError("query and out must share one dtype, and so must the two caches")
    if k_cache.dtype != query.dtype and not is_fp8(k_cache.dtype):
        raise ValueError(f"the caches must have the query's dtype or be float8_e4m3fn, not {k_cache.dtype}")
    if out.shape != query.shape:
        raise ValueError("out must have the query's shape")
    for name, t in (("query", query), ("k_cache", k_cache), ("v_cache", v_cache), ("out", out)):
        if t.stride(-1) != 1:
            raise ValueError(f"{name} must be contiguous in its last (head_dim) axis")


# KV_FP8 kernel argument: how a cache is read (kv_loop.py's docstring says what each means).
KV_NATIVE, KV_WIDEN, KV_FP8_DOTS, KV_FP8_QK = 0, 1, 2, 3
FP8_DOT_MODES = {"fp8": KV_FP8_DOTS, "fp8-qk": KV_FP8_QK}  # set_fp8_kv_compute's names of the FP8-dot modes
FP8_KV_COMPUTE = ("fp16", *FP8_DOT_MODES)
# Widening is the default: FP8 dots were 5-17 % slower per decode launch and equal in the engine on an
# H100 (docs/benchmarks.md, 2026-12-06), and they round q and p (4.3 % relative RMS against widening).
_fp8_kv_compute = "fp16"


def set_fp8_kv_compute(compute: str) -> None:
    """How 16-bit queries attend over an FP8 cache from now on: "fp16" (K/V widened in registers, dots at
    the 16-bit rate, equal to dequantize-then-attend), "fp8" (FP8 dots, q and p rounded to e4m3) or
    "fp8-qk" (q.K^T on FP8 tensor cores with q rounded to e4m3, K read without widening; V widened).
    Set it before an engine starts: CUDA graphs keep the mode they were captured with."""
    global _fp8_kv_compute
    if compute not in FP8_KV_COMPUTE:
        raise ValueError(f"fp8 KV compute must be one of {FP8_KV_COMPUTE}, not {compute!r}")
    _fp8_kv_compute = compute


def kv_fp8_mode(query_dtype: torch.dtype, cache_dtype: torch.dtype) -> int:
    """The KV_FP8 constexpr for these dtypes: FP8 dots only for 16-bit queries when asked for (fp32
    queries stay exact: they are the tests' oracle path)."""
    if not is_fp8(cache_dtype):
        return KV_NATIVE
    if _fp8_kv_compute in FP8_DOT_MODES and query_dtype in (torch.float16, torch.bfloat16):
        return FP8_DOT_MODES[_fp8_kv_compute]
    return KV_WIDEN


def kv_scale_args(
    query: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(k_scale, v_scale, KV_FP8) kernel arguments: an FP8 cache's per-head scales ([Hkv] fp32); for
    any other cache the caches themselves stand in for the pointers, which KV_FP8=KV_NATIVE never reads."""
    mode = kv_fp8_mode(query.dtype, k_cache.dtype)
    if mode == KV_NATIVE:
        return k_cache, v_cache, mode
    return kv_scale(k_cache), kv_scale(v_cache), mode


@triton.jit
def dot_acc(a, b, acc, UPCAST: tl.constexpr, PRECISION: tl.constexpr):
    """acc += a @ b, working around the interpreter's bf16 dot (see `upcast_dot`)."""
    if UPCAST:
        acc = tl.dot(a.to(tl.float32), b.to(tl.float32), acc)
    else:
        acc = tl.dot(a, b, acc, input_precision=PRECISION)
    return acc


@triton.jit
def round_to_e4m3(v):
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
def quantize_e4m3(x, scale, FP8_MAX: tl.constexpr, INTERPRET: tl.constexpr):
    """fp32 values over their scale, clamped to +-FP8_MAX and (in the interpreter) rounded to e4m3: the
    values `kv_cache.fp8.to_e4m3(x / scale)` casts, with a correctly rounded division."""
    q = tl.minimum(tl.maximum(tl.math.div_rn(x, scale), -FP8_MAX), FP8_MAX)
    if INTERPRET:
        q = round_to_e4m3(q)
    return q
