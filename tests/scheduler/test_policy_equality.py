"""Every scheduling policy combination gives exactly transformers' greedy tokens (CPU, float32)."""

from __future__ import annotations

import itertools

import pytest

from batchllm import LLM, SamplingParams
from tests.conftest import hf_greedy, mixed_prompts

MAX_NEW = 10
COMBOS = list(itertools.product([True, False], [True, False], ["memory", "count"], [True, False]))


@pytest.fixture(scope="module")
def workload(tiny_models):
    path = tiny_models["qwen3"]
    prompts = mixed_prompts(seed=21, count=16)
    return path, prompts, hf_greedy(path, prompts, MAX_NEW)


@pytest.mark.parametrize("clustering, decode_first, batching, caching", COMBOS)
def test_policy_combination_matches_transformers(workload, clustering, decode_first, batching, caching):
    path, prompts, expected = workload
    # a small pool (36 blocks of 4) and an under-estimated decode length force preemptions
    llm = LLM(path, device="cpu", skip_tokenizer_init=True, block_size=4, num_kv_blocks=36, max_model_len=128,
              max_num_batched_tokens=32, max_num_seqs=6, prefix_clustering=clustering, decode_first=decode_first,
              token_batching=batching, prefix_caching=caching)
    params = [SamplingParams(temperature=0, max_tokens=MAX_NEW, decode_length_hint=2, priority=i % 3)
              for i in range(len(prompts))]
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in outputs] == expected
    assert llm.engine.pool.num_used == 0


@pytest.mark.parametrize("mode", ["swap", "recompute"])
def test_forced_preemption_modes(workload, mode):
    path, prompts, expected = workload
    llm = LLM(path, device="cpu", skip_tokenizer_init=True, block_size=4, num_kv_blocks=36, max_model_len=128,
              max_num_batched_tokens=32, preemption_mode=mode, multi_level=True)
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts],
                           SamplingParams(temperature=0, max_tokens=MAX_NEW, decode_length_hint=1), use_tqdm=False)
    assert [o.outputs[0].token_ids for o in outputs] == expected
    counters = llm.engine.scheduler.counters
    assert counters.preemptions > 0
    assert (counters.swaps if mode == "swap" else counters.recomputes) == counters.preemptions


def test_priorities_run_urgent_requests_first(workload):
    path, prompts, expected = workload
    llm = LLM(path, device="cpu", skip_tokenizer_init=True, block_size=4, num_kv_blocks=36, max_model_len=128,
              max_num_batched_tokens=32, prefix_clustering=False)
    urgent = set(range(10, 16))
    params = [SamplingParams(temperature=0, max_tokens=MAX_NEW, priority=0 if i in urgent else 1)
              for i in range(len(prompts))]
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in outputs] == expected
    last_urgent = max(outputs[i].metrics.finished_time for i in urgent)
    later = [o for i, o in enumerate(outputs) if i not in urgent and o.metrics.first_scheduled_time > last_urgent]
    assert later  # some normal requests only started after every urgent one finished
    assert min(outputs[i].metrics.first_scheduled_time for i in urgent) <= min(
        o.metrics.first_scheduled_time for i, o in enumerate(outputs) if i not in urgent)
