"""Random workloads x random policies x tight KV pools, through LLM.generate: always the unconstrained tokens."""

from __future__ import annotations

import random

import pytest

from batchllm import LLM, SamplingParams


@pytest.fixture(scope="module")
def reference(tiny_models):
    path = tiny_models["llama"]
    return path, LLM(path, device="cpu", skip_tokenizer_init=True, scheduling="vllm-like", prefix_caching=False)


@pytest.mark.parametrize("seed", range(10))
def test_random_policy_under_memory_pressure(reference, seed):
    path, ref_llm = reference
    rng = random.Random(seed)
    base = [rng.randrange(1, 999) for _ in range(rng.choice([8, 16, 24]))]
    docs = [base + [rng.randrange(1, 999) for _ in range(rng.choice([4, 8, 12]))] for _ in range(3)]
    prompts = [rng.choice(docs + [base, []]) + [rng.randrange(1, 999) for _ in range(rng.randrange(1, 10))]
               for _ in range(rng.randrange(4, 14))]
    max_tokens = [rng.randrange(1, 8) for _ in prompts]
    batch = [{"prompt_token_ids": p} for p in prompts]
    expected = [o.outputs[0].token_ids for o in ref_llm.generate(
        batch, [SamplingParams(temperature=0, max_tokens=m) for m in max_tokens], use_tqdm=False)]

    block_size = rng.choice([4, 8])
    longest = max(len(p) + m for p, m in zip(prompts, max_tokens))
    num_blocks = -(-longest // block_size) + rng.randrange(0, 6)  # from just one request's worth upwards
    options = dict(prefix_clustering=rng.random() < 0.8, decode_first=rng.random() < 0.5,
                   token_batching=rng.choice(["memory", "count"]), prefix_caching=rng.random() < 0.5,
                   multi_level=rng.random() < 0.5, min_shared_len=block_size,
                   preemption_mode=rng.choice(["swap", "recompute", "auto"]))
    llm = LLM(path, device="cpu", skip_tokenizer_init=True, block_size=block_size, num_kv_blocks=num_blocks,
              max_model_len=num_blocks * block_size, max_num_batched_tokens=rng.choice([4, 8, 16, 64]),
              max_num_seqs=rng.choice([1, 2, 4, 64]), **options)
    params = [SamplingParams(temperature=0, max_tokens=m, priority=rng.randrange(0, 3),
                             decode_length_hint=rng.choice([None, 1, 3])) for m in max_tokens]
    outputs = llm.generate(batch, params, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in outputs] == expected, options
    assert llm.engine.pool.num_used == 0
