"""Small helpers shared by the Triton attention kernels (host side and @triton.jit device side)."""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl


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


@triton.jit
def dot_acc(a, b, acc, UPCAST: tl.constexpr, PRECISION: tl.constexpr):
    """acc += a @ b, working around the interpreter's bf16 dot (see `upcast_dot`)."""
    if UPCAST:
        acc = tl.dot(a.to(tl.float32), b.to(tl.float32), acc)
    else:
        acc = tl.dot(a, b, acc, input_precision=PRECISION)
    return acc
