"""Greedy output equals transformers token for token (float32, CPU) for every family and engine regime."""

from __future__ import annotations

import pytest

from batchllm import LLM, SamplingParams
from tests.conftest import FAMILIES, build_tiny_model, hf_greedy, mixed_prompts

MAX_NEW = 14


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_equals_transformers(family, tiny_models):
    path = tiny_models[family]
    prompts = mixed_prompts(seed=hash(family) % 1000, count=18)
    expected = hf_greedy(path, prompts, MAX_NEW)
    params = SamplingParams(temperature=0.0, max_tokens=MAX_NEW)
    batch = [{"prompt_token_ids": p} for p in prompts]

    roomy = LLM(path, device="cpu", skip_tokenizer_init=True)
    got = [o.outputs[0].token_ids for o in roomy.generate(batch, params, use_tqdm=False)]
    assert got == expected

    # 40 blocks of 4 tokens: far less than the batch needs, so requests are preempted; a 24-token budget
    # splits long prompts into prefill chunks mixed with decodes. Under-estimated decode lengths make the
    # memory-centric scheduler over-admit, so it must preempt too (swap here, recompute in the baseline).
    tight = dict(device="cpu", skip_tokenizer_init=True, block_size=4, num_kv_blocks=40, max_num_batched_tokens=24,
                 max_model_len=160)
    runs = [
        (LLM(path, scheduling="vllm-like", **tight), params),
        (LLM(path, scheduling="batchllm", preemption_mode="swap", **tight),
         SamplingParams(temperature=0.0, max_tokens=MAX_NEW, decode_length_hint=1)),
    ]
    for llm, run_params in runs:
        outputs = llm.generate(batch, run_params, use_tqdm=False)
        assert [o.outputs[0].token_ids for o in outputs] == expected
        assert llm.engine.scheduler.counters.preemptions > 0
        assert any(o.metrics.num_preemptions > 0 for o in outputs)
        assert llm.engine.pool.num_used == 0  # every block came back (cached ones are evictable)


def test_sharded_safetensors_load(tmp_path):
    path = build_tiny_model(str(tmp_path / "sharded"), "qwen3", max_shard_size="100KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").exists()
    prompts = mixed_prompts(seed=7, count=4)
    llm = LLM(path, device="cpu", skip_tokenizer_init=True)
    got = [o.outputs[0].token_ids for o in llm.generate([{"prompt_token_ids": p} for p in prompts],
                                                        SamplingParams(temperature=0, max_tokens=8), use_tqdm=False)]
    assert got == hf_greedy(path, prompts, 8)
