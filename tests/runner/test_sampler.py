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
