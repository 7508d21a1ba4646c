"""Building blocks shared by every supported family: RMSNorm, rotary embedding, SwiGLU."""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn


def use_fused_kernels(x: torch.Tensor) -> bool:
    """The fused Triton kernels of triton_ops.py serve CUDA tensors; elsewhere (CPU, the oracle tests)
    the PyTorch ops below, in transformers' op order, run."""
    return x.is_cuda


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps
        self.fp8_output = False  # set when the layer it feeds is an Fp8Linear (model/fp8.py)

    def forward(self, x: torch.Tensor, residual: Optional[torch.Tensor] = None):
        """norm(x); with a residual, (norm(x + residual), x + residual) (the residual stream updated).
        With `fp8_output` on CUDA, norm(...) comes quantized per token (`fp8.Fp8Activations`)."""
        if use_fused_kernels(x):
            if self.fp8_output:
                from batchllm.model.fp8 import rms_norm_to_fp8

                out = rms_norm_to_fp8(x, self.weight, self.eps, residual)
            else:
                from batchllm.model.triton_ops import rms_norm

                out = rms_norm(x, self.weight, self.eps, residual)  # updates `residual` in place
            return out if residual is None else (out, residual)
        if residual is None:
            return self._norm(x)
        total = x + residual
        return self._norm(total), total

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        # Same op order as transformers (normalise in fp32, cast back, then scale) so fp32 outputs match bitwise-close.
        dtype = x.dtype
        h = x.to(torch.float32)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(dtype)


def rope_inv_freq(head_dim: int, theta: float, scaling: Optional[dict]) -> torch.Tensor:
    """Inverse frequencies of rotary embedding, with llama3 or linear scaling applied."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    if scaling is None:
        return inv_freq
    factor = float(scaling["factor"])
    if scaling["rope_type"] == "linear":
        return inv_freq / factor
    # llama3: low frequencies scaled by `factor`, high kept, a smooth blend in between.
    low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
    old_len = float(scaling["original_max_position_embeddings"])
    low_wavelen, high_wavelen = old_len / low, old_len / high
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = ~(wavelen < high_wavelen) * ~(wavelen > low_wavelen)
    return torch.where(is_medium, smoothed, scaled)


class RotaryEmbedding(nn.Module):
    """Neox-style (rotate-half) rotary embedding with a cos/sin table over all positions."""

    def __init__(self, head_dim: int, max_positions: int, theta: float, scaling: Optional[dict]) -> None:
        super().__init__()
        inv_freq = rope_inv_freq(head_dim, theta, scaling)
        freqs = torch.outer(torch.arange(max_positions, dtype=torch.float32), inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        self.register_buffer("cos_cache", emb.cos(), persistent=False)
        self.register_buffer("sin_cache", emb.sin(), persistent=False)

    def forward(self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotate q [T, Hq, D] and k [T, Hkv, D] by their token positions [T] (in place on CUDA)."""
        if use_fused_kernels(q):
            from batchllm.model.triton_ops import rotary_embedding_

            rotary_embedding_(positions, q, k, self.cos_cache, self.sin_cache)
            return q, k
        cos = self.cos_cache[positions].to(q.dtype).unsqueeze(1)
        sin = self.sin_cache[positions].to(q.dtype).unsqueeze(1)
        return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x)) with gate and up fused into one matmul."""

    def __init__(self, hidden: int, intermediate: int) -> None:
        super().__init__()
        self.intermediate = intermediate
        self.gate_up_proj = nn.Linear(hidden, 2 * intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)
        self.fp8_output = False  # set when down_proj is an Fp8Linear: SiLU-mul then quantizes (model/fp8.py)

    def forward(self, x) -> torch.Tensor:
        gate_up = self.gate_up_proj(x)
        if use_fused_kernels(gate_up):
            if self.fp8_output:
                from batchllm.model.fp8 import silu_and_mul_to_fp8

                return self.down_proj(silu_and_mul_to_fp8(gate_up))
            from batchllm.model.triton_ops import silu_and_mul

            return self.down_proj(silu_and_mul(gate_up))
        gate, up = gate_up.split(self.intermediate, dim=-1)
        return self.down_proj(nn.functional.silu(gate) * up)
