"""LLMEngine.abort_all: mid-batch, every request goes and every KV block comes back; the history stays."""

from __future__ import annotations

import pytest

from batchllm import LLM, SamplingParams
from tests.conftest import mixed_prompts


@pytest.mark.parametrize("scheduling", ["batchllm", "vllm-like"])
def test_abort_all_mid_batch(tiny_models, scheduling):
    llm = LLM(tiny_models["llama"], device="cpu", skip_tokenizer_init=True, block_size=4, num_kv_blocks=40,
              max_num_batched_tokens=24, max_model_len=160, scheduling=scheduling, preemption_mode="swap",
              swap_space_bytes=1 << 20)
    engine = llm.engine
    params = SamplingParams(temperature=0.0, max_tokens=12, decode_length_hint=1)
    prompts = mixed_prompts(seed=21, count=12)
    requests = [engine.make_request(str(i), None, p, params, i) for i, p in enumerate(prompts)]
    engine.add_requests(requests)
    for _ in range(15):
        engine.step()
    assert engine.has_unfinished() and engine.pool.num_used > 0 and engine._in_flight is not None
    iterations, trace_rows, preemptions = engine.num_iterations, len(engine.trace), engine.scheduler.counters.preemptions
    assert preemptions > 0

    engine.abort_all()
    assert not engine.has_unfinished() and engine._in_flight is None
    assert engine.pool.num_used == 0 and engine.pool.num_free == engine.pool.num_blocks
    host = engine.scheduler.host_pool
    assert host is not None and host.num_free == host.num_blocks
    assert engine.num_iterations == iterations and len(engine.trace) == trace_rows  # history kept
    assert engine.scheduler.counters.preemptions == preemptions

    engine.abort_all()  # idempotent on a clean engine
    again = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    fresh = LLM(tiny_models["llama"], device="cpu", skip_tokenizer_init=True, block_size=4, num_kv_blocks=40,
                max_num_batched_tokens=24, max_model_len=160, scheduling=scheduling, preemption_mode="swap",
                swap_space_bytes=1 << 20).generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in again] == [o.outputs[0].token_ids for o in fresh]
    assert engine.pool.num_used == 0
