"""Seeded sampling for a whole batch in one pass: the Gumbel-max trick with counter-based noise.

A token drawn with ``argmax(logits / T + G)``, G standard Gumbel, follows softmax(logits / T). Each
row's noise is a hash of (its seed, the index of the output token it draws, the vocabulary index), so a
seeded request draws the same tokens whatever else is in the batch, after a preemption too, and one
kernel serves every row. It replaced one ``exponential_`` launch per row with its own torch.Generator:
with thousands of sampled rows (n = 8 on 512 prompts: 4096) that loop was thousands of launches a step.

``gumbel_argmax_reference`` (PyTorch, int64 arithmetic masked to 32 bits) is the definition and the CPU
path; the Triton kernel (gumbel_kernel.py, the GPU path, chosen by the sampler) computes the same hash in
uint32 and is tested against it.
"""

from __future__ import annotations

import torch

_GOLDEN, _STEP_MIX, _SEED_MIX = 0x9E3779B1, 0x85EBCA77, 0x27D4EB2F
_FMIX_1, _FMIX_2 = 0x85EBCA6B, 0xC2B2AE35
_MASK32 = 0xFFFFFFFF


def split_seed(seed: int) -> tuple[int, int]:
    """The low and high 32 bits of a seed (any Python int; reduced mod 2^64)."""
    seed &= (1 << 64) - 1
    return seed & _MASK32, seed >> 32


def _fmix32(x: torch.Tensor) -> torch.Tensor:
    x = x ^ (x >> 16)
    x = (x * _FMIX_1) & _MASK32
    x = x ^ (x >> 13)
    x = (x * _FMIX_2) & _MASK32
    return x ^ (x >> 16)


def uniform_noise_reference(seed_lo: torch.Tensor, seed_hi: torch.Tensor, step: torch.Tensor, vocab: int
                            ) -> torch.Tensor:
    """[rows, vocab] float32 in (0, 1): the hash of (seed, step, column), top 24 bits, centred."""
    cols = torch.arange(vocab, dtype=torch.int64, device=seed_lo.device).unsqueeze(0)
    x = ((cols * _GOLDEN) & _MASK32) ^ ((step.unsqueeze(1) * _STEP_MIX) & _MASK32) ^ seed_lo.unsqueeze(1)
    x = _fmix32(x)
    x = x ^ ((seed_hi.unsqueeze(1) * _SEED_MIX) & _MASK32)
    x = _fmix32(x)
    return ((x >> 8).to(torch.float32) + 0.5) * (1.0 / (1 << 24))


def gumbel_argmax_reference(logits: torch.Tensor, inv_temperature: torch.Tensor, seed_lo: torch.Tensor,
                            seed_hi: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
    """Token per row of ``argmax(logits * inv_temperature - log(-log(U)))`` (-inf logits never win)."""
    u = uniform_noise_reference(seed_lo, seed_hi, step, logits.shape[-1])
    scores = logits.float() * inv_temperature.unsqueeze(1) - torch.log(-torch.log(u))
    return scores.argmax(dim=-1)

