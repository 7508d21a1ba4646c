"""Top-k / top-p masking against a direct per-row computation."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from batchllm.runner.sampler import apply_top_k_top_p


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 10_000), top_k=st.integers(0, 12), top_p=st.floats(0.05, 1.0))
def test_top_k_top_p_keeps_the_right_tokens(seed, top_k, top_p):
    logits = torch.randn(1, 12, generator=torch.Generator().manual_seed(seed))
    masked = apply_top_k_top_p(logits.clone(), torch.tensor([top_k]), torch.tensor([top_p]))
    order = logits[0].argsort(descending=True).tolist()
    keep = order[: top_k or 12]
    probs = logits[0, keep].softmax(-1).tolist()
    kept, mass = [], 0.0
    for token, p in zip(keep, probs):
        if kept and mass >= top_p:
            break
        kept.append(token)
        mass += p
    assert sorted(torch.isfinite(masked[0]).nonzero().flatten().tolist()) == sorted(kept)
    assert torch.equal(masked[0, kept], logits[0, kept])


def _request(index: int, params):
    from batchllm.core.request import Request

    return Request(str(index), None, [1, 2], params, max_output_tokens=4, arrival_index=index)


def test_tiny_temperatures_sample_finite_valid_tokens_in_half_precision():
    """logits / 1e-5 overflows float16 (inf, then NaN in the softmax); the sampler divides by at least 1e-2."""
    from batchllm.runner.sampler import Sampler
    from batchllm.sampling_params import SamplingParams

    logits = (torch.randn(3, 50, generator=torch.Generator().manual_seed(0)) * 8).to(torch.float16)
    params = [SamplingParams(temperature=t, seed=i) for i, t in enumerate((1e-5, 5e-3, 1e-2))]
    sampler = Sampler([49], seed=0, device=torch.device("cpu"))
    chosen, _ = sampler.sample(logits.clone(), [_request(i, p) for i, p in enumerate(params)])
    # At temperature 1e-2 the top logit (gap of a few units) wins with probability ~1.
    assert chosen.tolist() == logits.float().argmax(-1).tolist()


def test_a_seeded_row_draws_the_same_tokens_in_any_batch():
    """Any int seed works (reduced mod 2**64); a row's draw depends on its seed and draw index only."""
    from batchllm.runner.sampler import Sampler
    from batchllm.sampling_params import SamplingParams

    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(1))
    seeds = (2**64, 5, -3, None)
    alone = []
    for row, seed in enumerate(seeds[:3]):
        sampler = Sampler([49], seed=0, device=torch.device("cpu"))
        chosen, _ = sampler.sample(logits[row:row + 1].clone(), [_request(row, SamplingParams(temperature=1.0, seed=seed))])
        alone.append(int(chosen[0]))
    mixed = [_request(i, SamplingParams(temperature=1.0 if i < 3 else 0.0, seed=s)) for i, s in enumerate(seeds)]
    sampler = Sampler([49], seed=7, device=torch.device("cpu"))
    chosen, _ = sampler.sample(logits.flip(0).clone(), mixed[::-1])  # reversed: every row elsewhere
    assert chosen.tolist()[::-1][:3] == alone
    assert all(r.error is None for r in mixed)
