"""FP8 (e4m3) W8A8 linear layers: weights per output channel, activations per token, GEMMs on FP8 tensor cores.

The one quantization rule (`quantize_rows`), for weights and activations alike: each row r of a [rows, K]
tensor gets scale_r = max(amax_r, MIN_AMAX) / 448 (448 is e4m3fn's largest finite value), and
q = float8_e4m3fn(clamp(x / scale_r, -448, 448)), rounded to nearest even; x ~ float32(q) * scale_r.

Weights ([N, K], per output channel) are quantized once, at load (`Fp8Linear.load_rows`); activations
([M, K], per token) are quantized on the fly in every forward (`quantize_per_token`: one fused Triton kernel
on CUDA, the PyTorch ops of `quantize_rows` elsewhere). The product is

    out[m, n] = (sum_k q_x[m, k] q_w[n, k]) * scale_x[m] * scale_w[n]  (+ bias[n]),

computed by `torch._scaled_mm` with row-wise scales on GPUs of compute capability 8.9+ (Ada, Hopper), or by
the reference path (`fp8_matmul_reference`: the fp8 values widened to fp32, an fp32 matmul, then the
scales) anywhere else. The reference exists for the CPU tests and the GPU check; it is slow (it widens the
whole weight on every call). The lm_head and the embeddings stay in the model dtype.
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Optional

import torch
from torch import nn

from batchllm.kv_cache.fp8 import FP8_KV_DTYPE, FP8_MAX, to_e4m3

FP8_DTYPE = FP8_KV_DTYPE  # one e4m3 format for weights, activations and the KV cache
# Floor of a row's amax: an all-zero row (CUDA-graph padding) gets a finite, positive scale and quantizes to 0.
MIN_AMAX = 1e-12
# The decoder's linear layers that run in FP8 (module paths inside each DecoderLayer).
FP8_LINEARS = ("self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj")


class Fp8Rows(NamedTuple):
    """Rows already in FP8 (from an FP8 checkpoint): e4m3fn values [n, K] and one fp32 scale per row [n]."""

    weight: torch.Tensor
    scale: torch.Tensor

    def dequantize(self, dtype: torch.dtype) -> torch.Tensor:
        return (self.weight.float() * self.scale[:, None]).to(dtype)


class Fp8Activations(NamedTuple):
    """Activations already quantized per token by the kernel that produced them (values [M, K] e4m3fn, scales
    [M, 1] fp32) and the dtype they would have had: what a norm or SiLU-mul hands the Fp8Linear after it."""

    values: torch.Tensor
    scale: torch.Tensor
    dtype: torch.dtype


def rms_norm_to_fp8(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: Optional[torch.Tensor] = None
) -> Fp8Activations:
    """RMSNorm (CUDA, fused kernel) with its output quantized per token in the same kernel; with `residual`,
    x + residual is written back into it. Equal to `quantize_per_token` of the plain fused norm."""
    from batchllm.model.fp8_triton import rms_norm_fp8

    values, scale = rms_norm_fp8(x, weight, eps, MIN_AMAX, residual)
    return Fp8Activations(values, scale, x.dtype)


def silu_and_mul_to_fp8(gate_up: torch.Tensor) -> Fp8Activations:
    """silu(gate) * up (CUDA, fused kernel) quantized per token in the same kernel."""
    from batchllm.model.fp8_triton import silu_and_mul_fp8

    values, scale = silu_and_mul_fp8(gate_up, MIN_AMAX)
    return Fp8Activations(values, scale, gate_up.dtype)


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [rows, K] (any float dtype) -> (float8_e4m3fn [rows, K], fp32 scales [rows]); see the module docstring."""
    xf = x.float()
    scale = xf.abs().amax(dim=-1).clamp_(min=MIN_AMAX) / FP8_MAX
    q = to_e4m3(xf / scale[:, None])  # x / scale may round just past 448: to_e4m3 clamps
    return q, scale


def quantize_weight_per_channel(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A weight [N, K] -> (float8_e4m3fn [N, K], fp32 scales [N]): one scale per output channel (amax / 448)."""
    return quantize_rows(w)


def quantize_per_token(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Activations [M, K] -> (float8_e4m3fn [M, K], fp32 scales [M, 1]), one scale per token (dynamic).

    The single place activations are quantized: a fused Triton kernel on CUDA (one read of x, one write of
    q), the PyTorch ops of `quantize_rows` elsewhere; both follow the same rule."""
    if x.is_cuda:
        from batchllm.model.fp8_triton import per_token_quant_fp8

        return per_token_quant_fp8(x, MIN_AMAX)
    q, scale = quantize_rows(x)
    return q, scale[:, None]


def dequantize_rows(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """float8 [rows, K] and its scales ([rows] or [rows, 1]) -> fp32 values."""
    return q.float() * scale.reshape(-1, 1)


@functools.lru_cache(maxsize=None)
def _capability(index: int) -> tuple[int, int]:
    return torch.cuda.get_device_capability(index)


def scaled_mm_supported(device: torch.device) -> bool:
    """FP8 tensor cores with row-wise scaled `torch._scaled_mm`: CUDA compute capability 8.9+ (Ada, Hopper, later)."""
    if device.type != "cuda":
        return False
    return _capability(device.index if device.index is not None else torch.cuda.current_device()) >= (8, 9)


def fp8_matmul_reference(
    xq: torch.Tensor, x_scale: torch.Tensor, wq: torch.Tensor, w_scale: torch.Tensor, out_dtype: torch.dtype
) -> torch.Tensor:
    """(xq [M, K] . wq [N, K]^T) * x_scale [M, 1] * w_scale [N] in fp32, then cast: what the tensor cores
    compute (exact products, fp32 sums), up to the order of the sums. Slow: used on CPU and for checks."""
    return ((xq.float() @ wq.float().t()) * x_scale * w_scale[None, :]).to(out_dtype)


def fp8_matmul_scaled_mm(
    xq: torch.Tensor, x_scale: torch.Tensor, wq: torch.Tensor, w_scale: torch.Tensor, out_dtype: torch.dtype
) -> torch.Tensor:
    """The same product on FP8 tensor cores. `_scaled_mm` wants a row-major [M, K] and a column-major [K, N]
    operand (wq [N, K] row-major, transposed: no copy), scales [M, 1] and [1, N] in fp32, K and N multiples
    of 16; with row-wise scales its output is bf16 (cast to `out_dtype` after)."""
    out = torch._scaled_mm(xq, wq.t(), scale_a=x_scale, scale_b=w_scale.view(1, -1), out_dtype=torch.bfloat16)
    return out if out_dtype == torch.bfloat16 else out.to(out_dtype)


class Fp8Linear(nn.Module):
    """y = x W^T + b with W in float8_e4m3fn (one fp32 scale per output channel) and x quantized per token.

    `weight` is a (frozen) Parameter so that loading sees and checks it like any weight; `weight_scale` is a
    buffer. Fill both through `load_rows`, a block of rows at a time (a fused projection's shards arrive
    one by one, each with its own scales). The bias, if any, stays in the model dtype and is added after.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool, dtype: Optional[torch.dtype] = None) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features, dtype=FP8_DTYPE), requires_grad=False)
        self.register_buffer("weight_scale", torch.ones(out_features, dtype=torch.float32))
        self.bias = nn.Parameter(torch.empty(out_features, dtype=dtype)) if bias else None
        # _scaled_mm needs K and N to be multiples of 16; other shapes take the reference path.
        self.tensor_core_shape = in_features % 16 == 0 and out_features % 16 == 0

    @classmethod
    def like(cls, linear: nn.Linear) -> "Fp8Linear":
        """An Fp8Linear of the same shape (and bias, in its dtype), on the current default device (meta when
        the model is built empty)."""
        has_bias = linear.bias is not None
        return cls(linear.in_features, linear.out_features, has_bias, linear.bias.dtype if has_bias else None)

    @torch.no_grad()
    def load_rows(self, offset: int, rows: torch.Tensor | Fp8Rows) -> None:
        """Rows [offset, offset + n) of the weight: a float block (quantized here, per row, on the weight's
        device; the caller may drop it right after) or rows already in FP8 with their scales."""
        if isinstance(rows, Fp8Rows):
            q, scale = rows.weight.to(self.weight.device), rows.scale.to(self.weight.device, torch.float32)
        else:
            q, scale = quantize_weight_per_channel(rows.to(self.weight.device))
        n = q.shape[0]
        if offset < 0 or offset + n > self.out_features or q.shape[1] != self.in_features:
            raise ValueError(f"rows [{offset}, {offset + n}) x {q.shape[1]} do not fit a weight of shape "
                             f"[{self.out_features}, {self.in_features}]")  # fmt: skip
        self.weight.data[offset : offset + n].copy_(q)
        self.weight_scale[offset : offset + n].copy_(scale.reshape(-1))

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return dequantize_rows(self.weight, self.weight_scale).to(dtype)

    def forward(self, x: torch.Tensor | Fp8Activations) -> torch.Tensor:
        """x: activations [..., K] (quantized here) or, from a fused producer, already quantized [M, K]."""
        if isinstance(x, Fp8Activations):
            xq, x_scale, dtype = x
            lead = xq.shape[:-1]
        else:
            lead, dtype = x.shape[:-1], x.dtype
            xq, x_scale = quantize_per_token(x.reshape(-1, self.in_features))
        if self.tensor_core_shape and scaled_mm_supported(xq.device):
            out = fp8_matmul_scaled_mm(xq, x_scale, self.weight, self.weight_scale, dtype)
        else:
            out = fp8_matmul_reference(xq, x_scale, self.weight, self.weight_scale, dtype)
        if self.bias is not None:
            out = out + self.bias
        return out.view(*lead, self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, fp8"


def _decoder_linears(model: nn.Module):
    """(parent module, attribute name, module) of each FP8_LINEARS path in every layer of `model.layers`."""
    for layer in model.layers:
        for path in FP8_LINEARS:
            parent_name, child = path.split(".")
            parent = getattr(layer, parent_name)
            yield parent, child, getattr(parent, child)


def _quantize_at_producers(model: nn.Module) -> None:
    """The norms before qkv_proj and gate_up_proj, and the SiLU-mul before down_proj, hand their FP8
    consumers quantized activations (one fused kernel each on CUDA; elsewhere the Fp8Linear quantizes)."""
    for layer in model.layers:
        layer.input_layernorm.fp8_output = True
        layer.post_attention_layernorm.fp8_output = True
        layer.mlp.fp8_output = True


def use_fp8_linears(model: nn.Module) -> list[Fp8Linear]:
    """Swap the decoder layers' linear layers (FP8_LINEARS of every module in `model.layers`) for empty
    Fp8Linear modules made on the current default device; returns them. The loader calls it on the meta
    model, so the full-precision weights of those layers are never allocated."""
    swapped = []
    for parent, child, linear in list(_decoder_linears(model)):
        with torch.device(linear.weight.device):
            fp8 = Fp8Linear.like(linear)
        setattr(parent, child, fp8)
        swapped.append(fp8)
    _quantize_at_producers(model)
    return swapped


@torch.no_grad()
def quantize_linears_(model: nn.Module) -> None:
    """Quantize an already loaded model's decoder linears in place (their weights read, then dropped): for
    comparing one loaded model in full precision and in FP8 without loading it twice."""
    for parent, child, linear in list(_decoder_linears(model)):
        if isinstance(linear, Fp8Linear):
            continue
        with torch.device(linear.weight.device):
            fp8 = Fp8Linear.like(linear)
        fp8.load_rows(0, linear.weight)
        if linear.bias is not None:
            fp8.bias.copy_(linear.bias)
        setattr(parent, child, fp8)
    _quantize_at_producers(model)
