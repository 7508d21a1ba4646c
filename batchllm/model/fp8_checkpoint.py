"""Checkpoints already in FP8: which `quantization_config` formats we read, and pairing each FP8 weight
with its scale.

Formats (config.json `quantization_config`):

* `quant_method: "fp8"` (vLLM / AutoFP8 and transformers' FineGrainedFP8): `weight` float8_e4m3fn with a
  per-tensor `weight_scale`, or, with `weight_block_size` [b0, b1], a `weight_scale_inv` per b0 x b1 block
  (DeepSeek style; despite the name, the factor that multiplies the stored values).
* `quant_method: "compressed-tensors"` (llm-compressor's FP8 checkpoints): `weight` float8_e4m3fn and
  `weight_scale` per tensor, per channel ([N, 1]) or per block (strategy "block", `block_structure`).

Every FP8 weight becomes rows of e4m3 values with one fp32 scale per output row (`Fp8Rows`), which is what
`Fp8Linear` computes with: a per-channel scale is taken as is; a per-tensor one is repeated over the rows
(so the q/k/v or gate/up shards of a fused projection each keep their own scale: exact); block-wise
weights are dequantized with their block scales and re-quantized per row (one more rounding, relative
error <= 2^-4 per element). Activations are always quantized per token at run time: a static
`input_scale` is ignored (a per-token scale is at least as accurate as one per-tensor scale).
Zero points (`weight_zero_point`, `input_zero_point`) are ignored: FP8 schemes are symmetric, checked here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Optional, Union

import torch

from batchllm.model.fp8 import FP8_DTYPE, Fp8Rows

_SCALE_SUFFIXES = (".weight_scale_inv", ".weight_scale")
_IGNORED_SUFFIXES = (".input_scale", ".input_zero_point", ".weight_zero_point")
_SUPPORTED = "quant_method 'fp8' or 'compressed-tensors' with 8-bit float (e4m3) weights"


@dataclass(frozen=True)
class Fp8CheckpointFormat:
    """How a checkpoint stores its FP8 weights. block: the (rows, cols) of one weight-scale block, None
    for per-tensor or per-channel scales (told apart by the scale's shape)."""

    method: str
    block: Optional[tuple[int, int]] = None


def _refuse(model: str, what: str) -> ValueError:
    return ValueError(f"model={model!r}: {what}; supported: {_SUPPORTED} (or a bf16/fp16/fp32 checkpoint, "
                      "which quantization='fp8' quantizes at load)")  # fmt: skip


def _block(value: Any, model: str, field: str) -> tuple[int, int]:
    if not (isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, int) and v > 0 for v in value)):
        raise _refuse(model, f"quantization_config {field}={value!r} is not two positive integers")
    return int(value[0]), int(value[1])


def _compressed_tensors(qc: dict, model: str) -> Fp8CheckpointFormat:
    fmt = qc.get("format")
    if fmt not in (None, "float-quantized", "naive-quantized"):
        raise _refuse(model, f"compressed-tensors format {fmt!r} is not an FP8 one")
    groups = qc.get("config_groups")
    if not isinstance(groups, dict) or not groups:
        raise _refuse(model, "compressed-tensors quantization_config has no config_groups")
    blocks = set()
    for name, group in groups.items():
        weights = group.get("weights") if isinstance(group, dict) else None
        if not isinstance(weights, dict):
            raise _refuse(model, f"compressed-tensors config_groups.{name} has no 'weights' scheme")
        if weights.get("type") != "float" or weights.get("num_bits") != 8 or weights.get("symmetric", True) is not True:
            raise _refuse(model, f"compressed-tensors config_groups.{name}.weights is {weights.get('num_bits')}-bit "
                                 f"{weights.get('type')} (symmetric={weights.get('symmetric', True)})")  # fmt: skip
        strategy = weights.get("strategy")
        if strategy == "block":
            blocks.add(_block(weights.get("block_structure"), model, f"config_groups.{name}.weights.block_structure"))
        elif strategy not in ("tensor", "channel"):
            raise _refuse(model, f"compressed-tensors config_groups.{name}.weights strategy {strategy!r} "
                                 "(supported: tensor, channel, block)")  # fmt: skip
        acts = group.get("input_activations")
        if acts is not None and (acts.get("type") != "float" or acts.get("num_bits") != 8):
            raise _refuse(model, f"compressed-tensors config_groups.{name}.input_activations is "
                                 f"{acts.get('num_bits')}-bit {acts.get('type')}")  # fmt: skip
    if len(blocks) > 1:
        raise _refuse(model, f"compressed-tensors config_groups use different weight blocks {sorted(blocks)}")
    return Fp8CheckpointFormat("compressed-tensors", blocks.pop() if blocks else None)


def parse_quantization_config(qc: Any, model: str) -> Optional[Fp8CheckpointFormat]:
    """The FP8 format of a config.json `quantization_config` (None when there is none); ValueError naming
    the field for any other quantization."""
    if qc is None:
        return None
    if not isinstance(qc, dict):
        raise _refuse(model, f"quantization_config {qc!r} is not an object")
    method = qc.get("quant_method")
    if method == "fp8":
        if qc.get("activation_scheme", "dynamic") not in ("dynamic", "static"):
            raise _refuse(model, f"quantization_config activation_scheme={qc.get('activation_scheme')!r}")
        if qc.get("fmt", "e4m3") != "e4m3":
            raise _refuse(model, f"quantization_config fmt={qc.get('fmt')!r} (only e4m3 weights are read)")
        block = qc.get("weight_block_size")
        return Fp8CheckpointFormat("fp8", None if block is None else _block(block, model, "weight_block_size"))
    if method == "compressed-tensors":
        return _compressed_tensors(qc, model)
    raise _refuse(model, f"quantization_config quant_method={method!r} is not supported")


def _row_scales(
    name: str, weight: torch.Tensor, scale: torch.Tensor, block: Optional[tuple[int, int]]
) -> Union[Fp8Rows, torch.Tensor]:
    """An FP8 weight [N, K] and its checkpoint scale -> Fp8Rows (per-tensor / per-channel scale) or, for
    block scales, the dequantized fp32 weight (re-quantized per row by whoever takes it)."""
    rows, cols = weight.shape
    scale = scale.to(weight.device, torch.float32)
    if scale.numel() == 1:
        return Fp8Rows(weight, scale.reshape(1).expand(rows).contiguous())
    if scale.numel() == rows and (scale.dim() == 1 or scale.shape[-1] == 1):
        return Fp8Rows(weight, scale.reshape(rows).contiguous())
    if block is not None and scale.dim() == 2:
        b0, b1 = block
        if scale.shape == (-(-rows // b0), -(-cols // b1)):
            full = scale.repeat_interleave(b0, 0)[:rows].repeat_interleave(b1, 1)[:, :cols]
            return weight.float() * full
    raise ValueError(f"{name}: weight {list(weight.shape)} has a scale of shape {list(scale.shape)}, which is "
                     f"neither per tensor, per channel nor per {block or 'block'} block")  # fmt: skip


class Fp8TensorPairer:
    """Joins the checkpoint's FP8 weights and their scales, which arrive in any order.

    `feed(name, tensor)` yields (weight name, value) pairs ready to load: a float tensor as it came, or,
    for an FP8 weight once its scale has been seen, `Fp8Rows` (or the dequantized weight for block scales).
    Scales themselves and ignored tensors (input scales, zero points) yield nothing. `finish()` raises if an
    FP8 weight never got its scale. Tensors are moved to `device` before any arithmetic."""

    def __init__(self, fmt: Optional[Fp8CheckpointFormat], device: torch.device, model: str) -> None:
        self.block = fmt.block if fmt is not None else None
        self.device, self.model = device, model
        self._weights: dict[str, torch.Tensor] = {}
        self._scales: dict[str, torch.Tensor] = {}

    def feed(self, name: str, tensor: torch.Tensor) -> Iterator[tuple[str, Union[torch.Tensor, Fp8Rows]]]:
        if name.endswith(_IGNORED_SUFFIXES):
            return
        suffix = next((s for s in _SCALE_SUFFIXES if name.endswith(s)), None)
        if suffix is not None:
            weight_name = name[: -len(suffix)] + ".weight"
            self._scales[weight_name] = tensor
            if weight_name in self._weights:
                yield weight_name, self._pair(weight_name)
            return
        if tensor.dtype.is_floating_point and tensor.element_size() == 1:
            if tensor.dtype != FP8_DTYPE:
                raise ValueError(f"model={self.model!r}: {name} is {tensor.dtype}; only float8_e4m3fn FP8 weights "
                                 "are read")  # fmt: skip
            self._weights[name] = tensor
            if name in self._scales:
                yield name, self._pair(name)
            return
        yield name, tensor

    def _pair(self, name: str) -> Union[Fp8Rows, torch.Tensor]:
        weight, scale = self._weights.pop(name).to(self.device), self._scales.pop(name)
        if weight.dim() != 2:
            raise ValueError(f"model={self.model!r}: FP8 tensor {name} has shape {list(weight.shape)}, "
                             "not [rows, cols]")  # fmt: skip
        return _row_scales(name, weight, scale, self.block)

    def finish(self) -> None:
        if self._weights:
            names = sorted(self._weights)
            raise ValueError(f"model={self.model!r}: FP8 weights without a weight_scale / weight_scale_inv: "
                             f"{names[:5]}")  # fmt: skip
