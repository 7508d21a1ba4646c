"""Gumbel-max sampling with counter-based noise: the Triton kernel equals its PyTorch definition (CPU: the
interpreter), the draws follow softmax(logits / T), and a key (seed, draw index) fixes the draw."""

from __future__ import annotations

import pytest
import torch

from batchllm.runner.gumbel_sampling import gumbel_argmax_reference, split_seed, uniform_noise_reference
from batchllm.runner.sampler import gumbel_argmax

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _keys(seeds, steps):
    pairs = [split_seed(s) for s in seeds]
    return (torch.tensor([lo for lo, _ in pairs]), torch.tensor([hi for _, hi in pairs]), torch.tensor(steps))


def test_the_kernel_equals_the_reference_bit_for_bit():
    pytest.importorskip("triton")
    from batchllm.runner.gumbel_kernel import gumbel_argmax_triton

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(7, 5000, generator=g) * 3
    logits[2, :4990] = float("-inf")  # a row with 10 tokens left (a top-k or a grammar's mask)
    logits[3] = float("-inf")  # nothing allowed: token 0, as argmax
    inv = torch.rand(7, generator=g) + 0.5
    lo, hi, step = _keys((0, 1, 2**40 + 7, 123456789, 2**63 + 5, -3, 2**64 - 1), [0, 1, 5, 100, 7, 2**32 - 1, 3])
    want = gumbel_argmax_reference(logits, inv, lo, hi, step)
    got = gumbel_argmax_triton(*(t.to(DEVICE) for t in (logits, inv, lo, hi, step)))
    assert got.cpu().tolist() == want.tolist()
    assert 4990 <= int(want[2]) and int(want[3]) == 0


def test_noise_is_open_uniform_and_keys_differ():
    lo, hi, step = _keys((11, 11, 12), [0, 1, 0])
    u = uniform_noise_reference(lo, hi, step, 20000)
    assert bool(((u > 0) & (u < 1)).all())
    assert abs(float(u.mean()) - 0.5) < 0.01 and abs(float(u.var()) - 1 / 12) < 0.005
    # different steps or seeds: unrelated noise
    assert abs(float(torch.corrcoef(u)[0, 1])) < 0.03 and abs(float(torch.corrcoef(u)[0, 2])) < 0.03


def test_draws_follow_the_softmax():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, float("-inf")]])
    temperature = 0.7
    draws = 20000
    lo, hi, step = _keys([42] * draws, list(range(draws)))  # one seed, consecutive draw indices
    chosen = gumbel_argmax(logits.expand(draws, -1), torch.full((draws,), 1 / temperature), lo, hi, step)
    freq = torch.bincount(chosen, minlength=5).float() / draws
    want = (logits[0] / temperature).softmax(-1)
    assert float(freq[4]) == 0.0
    # 4 sigma of a binomial at 20000 draws is at most 0.0142
    assert torch.allclose(freq, want, atol=0.0142), (freq, want)
