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


def test_a_seed_torch_rejects_fails_only_its_own_row():
    from batchllm.runner.sampler import Sampler
    from batchllm.sampling_params import SamplingParams

    requests = [_request(0, SamplingParams(temperature=1.0, seed=2**64)), _request(1, SamplingParams(seed=5))]
    sampler = Sampler([49], seed=0, device=torch.device("cpu"))
    chosen, _ = sampler.sample(torch.randn(2, 50), requests)
    assert chosen.shape == (2,)
    assert requests[0].error is not None and "seed=18446744073709551616" in requests[0].error
    assert requests[1].error is None and requests[1].generator is not None
