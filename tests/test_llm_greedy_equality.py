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

    # 40 blocks of 4 tokens: far less than the batch needs, so requests are preempted and recomputed;
    # a 24-token budget splits long prompts into prefill chunks mixed with decodes.
    tight = LLM(path, device="cpu", skip_tokenizer_init=True, block_size=4, num_kv_blocks=40,
                max_num_batched_tokens=24, max_model_len=160)
    outputs = tight.generate(batch, params, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in outputs] == expected
    assert tight.engine.scheduler.num_preemptions > 0
    assert any(o.metrics.num_preemptions > 0 for o in outputs)
    assert tight.engine.pool.num_free == 40  # every block came back


def test_sharded_safetensors_load(tmp_path):
    path = build_tiny_model(str(tmp_path / "sharded"), "qwen3", max_shard_size="100KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").exists()
    prompts = mixed_prompts(seed=7, count=4)
    llm = LLM(path, device="cpu", skip_tokenizer_init=True)
    got = [o.outputs[0].token_ids for o in llm.generate([{"prompt_token_ids": p} for p in prompts],
                                                        SamplingParams(temperature=0, max_tokens=8), use_tqdm=False)]
    assert got == hf_greedy(path, prompts, 8)
