"""Overlap scheduling (iteration i+1 launched before iteration i's tokens are read) changes no output.

Tight memory forces preemption (swap and recompute) while tokens are in flight; stop tokens make
requests stop on a token the host has not seen when the next iteration is launched; several batches
run on one engine, whose pool must be whole again after each.
"""

from __future__ import annotations

import pytest

from batchllm import LLM, SamplingParams
from tests.conftest import mixed_prompts

TIGHT = dict(device="cpu", skip_tokenizer_init=True, block_size=4, num_kv_blocks=40, max_num_batched_tokens=24,
             max_model_len=160)

CASES = {
    "batchllm-swap": (dict(scheduling="batchllm", preemption_mode="swap"),
                      SamplingParams(temperature=0.0, max_tokens=14, decode_length_hint=1)),
    "batchllm-multilevel-seeded": (dict(scheduling="batchllm", multi_level=True),
                                   SamplingParams(temperature=0.8, seed=3, max_tokens=12, logprobs=0, min_tokens=3)),
    "vllm-like-stops": (dict(scheduling="vllm-like", preemption_mode="recompute"),
                        SamplingParams(temperature=0.9, top_p=0.8, seed=5, max_tokens=10,
                                       stop_token_ids=list(range(3, 1000, 10)))),  # a tenth of the vocabulary
    # Urgent requests preempt running ones, which may be admitted again in the same iteration while
    # their newest token is still in flight.
    "batchllm-priorities": (dict(scheduling="batchllm"),
                            [SamplingParams(temperature=0.0, max_tokens=14, priority=i % 3, decode_length_hint=1)
                             for i in range(18)]),
}


def _outputs(llm: LLM, batch, params):
    return [(o.outputs[0].token_ids, o.outputs[0].finish_reason, o.outputs[0].logprobs)
            for o in llm.generate(batch, params, use_tqdm=False)]


@pytest.mark.parametrize("case", sorted(CASES))
def test_overlap_matches_step_by_step(case, tiny_models):
    options, params = CASES[case]
    path = tiny_models["qwen2"]
    overlapped = LLM(path, overlap_scheduling=True, **TIGHT, **options)
    in_lockstep = LLM(path, overlap_scheduling=False, **TIGHT, **options)
    launches_with_tokens_in_flight = []
    forward = overlapped.engine.runner.forward
    overlapped.engine.runner.forward = lambda plan, in_flight=None: (
        launches_with_tokens_in_flight.append(in_flight is not None), forward(plan, in_flight))[1]
    for seed in range(4):
        batch = [{"prompt_token_ids": p} for p in mixed_prompts(seed=seed, count=18)]
        got, expected = _outputs(overlapped, batch, params), _outputs(in_lockstep, batch, params)
        for (tokens, reason, logprobs), (want_tokens, want_reason, want_logprobs) in zip(got, expected):
            assert (tokens, reason) == (want_tokens, want_reason)
            if want_logprobs is not None:
                assert logprobs == pytest.approx(want_logprobs, abs=1e-5)
        for llm in (overlapped, in_lockstep):
            assert llm.engine.pool.num_used == 0  # every block came back, batch after batch
            assert not llm.engine.has_unfinished()
    assert any(launches_with_tokens_in_flight)
    if case != "batchllm-multilevel-seeded":
        assert overlapped.engine.scheduler.counters.preemptions > 0
    if case == "vllm-like-stops":
        assert any(reason == "stop" for _, reason, _ in got)
