"""FP8 (e4m3) KV cache: the element type, the per-layer scales and the quantize / dequantize rule.

Written: stored = float8_e4m3fn(clamp(x / scale, -448, 448)); read: float32(stored) * scale.
A scale is one fp32 per KV head ([num_kv_heads]), for K and for V of every layer. A checkpoint's
per-tensor scale (vLLM / compressed-tensors names `self_attn.k_scale`, `self_attn.v_scale`, or one
`self_attn.kv_scale` for both) is broadcast over the heads; one with num_kv_heads values is used per head.
Without a calibrated scale (dummy weights, bf16 checkpoints) the scale is 1.0, as in vLLM: |x| in
[2^-6, 448] then keeps e4m3's 3 mantissa bits (relative error <= 2^-4 after rounding), smaller values
are subnormal (absolute error <= 2^-10) and larger ones are clamped.

Each cache tensor carries its scale as the attribute `kv_scale` (set when the cache is allocated): the
model's layers hand the backend only the two cache tensors, and the scale must travel with them.
"""

from __future__ import annotations

import logging
import math
import re
from typing import Optional, Union

import torch

logger = logging.getLogger(__name__)

# The one FP8 format of the engine (KV here, and the FP8 linear layers' weights and activations, model/fp8.py).
FP8_KV_DTYPE = torch.float8_e4m3fn
FP8_MAX = 448.0  # largest finite e4m3fn value; writes clamp to it (the format has no infinity)

_SCALE_ATTR = "kv_scale"
# vLLM's names (and the attention-module and older output_scale spellings it remaps) of KV scales.
_SCALE_NAMES = (
    re.compile(r"^(?:model\.)?layers\.(\d+)\.self_attn\.(?:attn\.)?(k_scale|v_scale|kv_scale)$"),
    re.compile(r"^(?:model\.)?layers\.(\d+)\.self_attn\.(k|v)_proj\.output_scale$"),
)


def is_fp8(dtype: torch.dtype) -> bool:
    return dtype == FP8_KV_DTYPE


def attach_kv_scale(cache: torch.Tensor, scale: Union[torch.Tensor, float, None] = None) -> torch.Tensor:
    """Give an FP8 cache tensor its dequantization scale ([num_kv_heads] fp32 on the cache's device;
    a scalar is broadcast, None means 1.0); returns it."""
    num_kv_heads = cache.shape[2]
    value = torch.as_tensor(1.0 if scale is None else scale, dtype=torch.float32).flatten()
    if value.numel() == 1:
        value = value.expand(num_kv_heads)
    if value.numel() != num_kv_heads:
        raise ValueError(f"a KV scale has {value.numel()} values; expected 1 or num_kv_heads={num_kv_heads}")
    if not bool(torch.isfinite(value).all()) or not bool((value > 0).all()):
        raise ValueError(f"KV scales must be positive and finite, got {value.tolist()}")
    value = value.contiguous().to(cache.device)
    setattr(cache, _SCALE_ATTR, value)
    return value


def kv_scale(cache: torch.Tensor) -> torch.Tensor:
    """The dequantization scale of an FP8 cache tensor ([num_kv_heads] fp32); 1.0 if none was attached."""
    scale = getattr(cache, _SCALE_ATTR, None)
    return scale if scale is not None else attach_kv_scale(cache)


def to_e4m3(scaled: torch.Tensor) -> torch.Tensor:
    """Already-scaled fp32 values -> float8_e4m3fn, clamped to +-448 first (a cast of a value past 448 gives
    NaN: the format has no infinity) and rounded to nearest even. Modifies `scaled` in place."""
    return scaled.clamp_(-FP8_MAX, FP8_MAX).to(FP8_KV_DTYPE)


def quantize_kv(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x [..., Hkv, D] -> float8_e4m3fn: divided by its head's scale, clamped to +-448, rounded to nearest."""
    return to_e4m3(x.float() / scale[:, None])


def dequantize_kv(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """float8_e4m3fn [..., Hkv, D] -> float32 values (stored * scale of the head)."""
    return x.float() * scale[:, None]


def storage_view(t: torch.Tensor) -> torch.Tensor:
    """The same memory as uint8 when `t` is FP8, else `t`: indexing copies on raw bytes are exact and
    supported for every dtype on every device (index kernels do not all cover the float8 types)."""
    return t.view(torch.uint8) if is_fp8(t.dtype) else t


def from_storage(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Undo `storage_view` for a tensor copied out of a cache of `dtype`."""
    return t.view(dtype) if is_fp8(dtype) else t


class CheckpointKVScales:
    """The KV scales a checkpoint holds, gathered while its tensors stream past the loader.

    `offer(name, tensor)` takes a tensor named as a KV scale (and says so); `for_layer` gives a layer's
    (k_scale, v_scale), each None when the checkpoint has none (then the cache uses 1.0)."""

    def __init__(self) -> None:
        self._scales: dict[tuple[int, str], torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self._scales)

    def offer(self, name: str, tensor: torch.Tensor) -> bool:
        for pattern in _SCALE_NAMES:
            match = pattern.match(name)
            if match:
                kind = {"k_scale": "k", "v_scale": "v", "kv_scale": "kv"}.get(match.group(2), match.group(2))
                self._scales[(int(match.group(1)), kind)] = tensor.detach().to("cpu", torch.float32).flatten()
                return True
        return False

    def for_layer(self, layer: int) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
        both = self._scales.get((layer, "kv"))
        return self._scales.get((layer, "k"), both), self._scales.get((layer, "v"), both)


def attach_layer_scales(
    caches: list[tuple[torch.Tensor, torch.Tensor]], scales: Optional[CheckpointKVScales]
) -> None:
    """Attach every layer's K and V scale (the checkpoint's, else 1.0) to its FP8 cache tensors."""
    found = 0
    for layer, (k_cache, v_cache) in enumerate(caches):
        k_scale, v_scale = scales.for_layer(layer) if scales is not None else (None, None)
        found += (k_scale is not None) + (v_scale is not None)
        attach_kv_scale(k_cache, k_scale)
        attach_kv_scale(v_cache, v_scale)
    if found < 2 * len(caches):
        logger.info(
            "FP8 KV cache: the checkpoint has %d of %d K/V scales; the others are 1.0 (uncalibrated, as vLLM)",
            found, 2 * len(caches),
        )  # fmt: skip


def fp8_round_trip_bound(x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Elementwise bound on |dequantize(quantize(x)) - x| for |x| / scale <= 448: half an e4m3 ulp,
    2^-4 relative for normal values and 2^-10 * scale absolute below the normal range (2^-6)."""
    return torch.maximum(x.abs() * 2.0**-4, torch.full_like(x, math.ldexp(scale, -10)))
