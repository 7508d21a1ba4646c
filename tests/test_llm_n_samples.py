"""SamplingParams.n: n samples of a prompt on one prefill, one RequestOutput per prompt with n completions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from batchllm import LLM, SamplingParams
from batchllm.engine.samples import sample_seed
from batchllm.sampling_params import INT64_MAX, INT64_MIN, MAX_N
from tests.conftest import hf_greedy, mixed_prompts

BLOCK = 16
CPU = dict(device="cpu", skip_tokenizer_init=True, block_size=BLOCK, max_model_len=256)


def _prompt(length: int, seed: int = 0) -> list[int]:
    return torch.randint(1, 999, (length,), generator=torch.Generator().manual_seed(seed)).tolist()


def _ids(output) -> list[list[int]]:
    return [c.token_ids for c in output.outputs]


@pytest.fixture(scope="module")
def llm(tiny_models) -> LLM:
    return LLM(tiny_models["llama"], **CPU)


def _clean(llm: LLM) -> bool:
    return not llm.engine.has_unfinished() and llm.engine.pool.num_used == 0


def test_greedy_n3_gives_three_equal_outputs_equal_to_transformers(tiny_models, llm):
    prompt = _prompt(40, seed=1)
    [out] = llm.generate([{"prompt_token_ids": prompt}], SamplingParams(n=3, temperature=0.0, max_tokens=10),
                         use_tqdm=False)
    expected = hf_greedy(tiny_models["llama"], [prompt], 10)[0]
    assert [c.index for c in out.outputs] == [0, 1, 2]
    assert _ids(out) == [expected] * 3
    assert out.finished and out.error is None and out.prompt_token_ids == prompt


def _prefill_tokens(llm: LLM, prompts: list[dict], params: SamplingParams) -> tuple[int, list]:
    trace = llm.engine.trace
    before = int(trace.column("prefill_tokens").sum())
    outputs = llm.generate(prompts, params, use_tqdm=False)
    return int(trace.column("prefill_tokens").sum()) - before, outputs


def test_the_prompt_is_prefilled_once_for_all_samples(llm):
    length, n = 64, 4
    groups_before = llm.engine.scheduler.counters.prefix_groups
    prefilled, [out] = _prefill_tokens(llm, [{"prompt_token_ids": _prompt(length, seed=2)}],
                                       SamplingParams(n=n, temperature=1.0, seed=5, max_tokens=4))
    # The grouping rule (prefix/analysis.py groupable_lengths, cut to whole blocks): each sample keeps its
    # last token, so the shared prefix is the whole blocks of the first length - 1 tokens, computed once;
    # each sample prefills the rest of the prompt itself.
    shared = (length - 1) // BLOCK * BLOCK
    assert shared == 48
    expected = shared + n * (length - shared)
    assert expected == 48 + 4 * 16 == 112
    assert prefilled == expected
    assert prefilled < n * length / 2  # far below n separate prefills (256)
    assert llm.engine.scheduler.counters.prefix_groups == groups_before + 1
    assert len(out.outputs) == n and all(len(c.token_ids) == 4 for c in out.outputs)
    assert _clean(llm)


def test_a_prompt_shorter_than_a_shared_block_is_prefilled_by_each_sample(llm):
    # 16 tokens: the groupable 15 are less than one block, so no prefix group (documented in engine/samples.py).
    prefilled, [out] = _prefill_tokens(llm, [{"prompt_token_ids": _prompt(16, seed=3)}],
                                       SamplingParams(n=3, temperature=0.0, max_tokens=3))
    assert prefilled == 3 * 16
    assert len({tuple(ids) for ids in _ids(out)}) == 1


def test_seeded_samples_are_reproducible_and_independent_of_the_batch(tiny_models, llm):
    prompt = _prompt(50, seed=4)
    params = SamplingParams(n=4, temperature=1.0, seed=1234, max_tokens=8)
    [alone] = llm.generate([{"prompt_token_ids": prompt}], params, use_tqdm=False)
    assert len({tuple(ids) for ids in _ids(alone)}) > 1  # different seeds: different samples

    others = [{"prompt_token_ids": p} for p in mixed_prompts(seed=9, count=6)]
    batch = others[:3] + [{"prompt_token_ids": prompt}] + others[3:] + [{"prompt_token_ids": prompt[:30]}]
    params_list = ([SamplingParams(temperature=1.0, max_tokens=6)] * 3 + [params]
                   + [SamplingParams(n=2, temperature=0.7, seed=9, max_tokens=5)] * 3
                   + [SamplingParams(n=3, temperature=1.0, max_tokens=5)])  # unseeded: the shared stream
    crowded = LLM(tiny_models["llama"], **CPU, max_num_batched_tokens=64).generate(batch, params_list, use_tqdm=False)
    assert _ids(crowded[3]) == _ids(alone)
    assert [len(o.outputs) for o in crowded] == [1, 1, 1, 4, 2, 2, 2, 3]
    # vLLM's convention: sample i draws as a single request with seed + i would.
    for i in range(4):
        [single] = llm.generate([{"prompt_token_ids": prompt}],
                                SamplingParams(temperature=1.0, seed=1234 + i, max_tokens=8), use_tqdm=False)
        assert single.outputs[0].token_ids == alone.outputs[i].token_ids


def test_run_encoded_yields_one_output_per_prompt_and_abandoning_it_aborts_all_samples(llm):
    prompts = mixed_prompts(seed=11, count=5)
    params = [SamplingParams(n=k + 1, temperature=0.0, max_tokens=4) for k in range(5)]
    got = dict(llm.run_encoded([(None, p) for p in prompts], params))
    assert sorted(got) == list(range(5))
    assert [len(got[i].outputs) for i in range(5)] == [1, 2, 3, 4, 5]
    assert [got[i].prompt_token_ids for i in range(5)] == prompts
    ids = {o.request_id for o in got.values()}
    assert len(ids) == 5  # the prompt's id, not a sample's

    stream = llm.run_encoded([(None, p) for p in prompts], params)
    next(stream)
    assert llm.engine.has_unfinished()
    stream.close()
    assert _clean(llm)


def test_an_interrupted_call_with_samples_leaves_a_clean_llm(llm, monkeypatch):
    batch = [{"prompt_token_ids": p} for p in mixed_prompts(seed=12, count=4)]
    params = SamplingParams(n=3, temperature=0.8, seed=3, max_tokens=6)
    fresh = [_ids(o) for o in llm.generate(batch, params, use_tqdm=False)]
    check, calls = llm.engine.stop_checker.check, [0]

    def interrupt_later(request):
        calls[0] += 1
        if calls[0] > 10:
            raise KeyboardInterrupt
        return check(request)

    monkeypatch.setattr(llm.engine.stop_checker, "check", interrupt_later)
    with pytest.raises(KeyboardInterrupt):
        llm.generate(batch, params, use_tqdm=False)
    assert _clean(llm)
    monkeypatch.undo()
    assert [_ids(o) for o in llm.generate(batch, params, use_tqdm=False)] == fresh


def test_a_failed_sample_is_named_and_the_others_are_kept(llm, monkeypatch):
    check = llm.engine.stop_checker.check

    def check_or_fail(request):
        if request.request_id.startswith("1_") and request.num_output_tokens >= 2:
            raise ValueError("bad stop check")
        return check(request)

    monkeypatch.setattr(llm.engine.stop_checker, "check", check_or_fail)
    [out] = llm.generate([{"prompt_token_ids": _prompt(20, seed=6)}], SamplingParams(n=3, temperature=0.0, max_tokens=5),
                         use_tqdm=False)
    assert [c.finish_reason for c in out.outputs] == ["length", "error", "length"]
    assert out.error.startswith("sample 1 of 3: ") and "ValueError: bad stop check" in out.error
    assert out.outputs[1].token_ids == out.outputs[0].token_ids[:2]
    assert _clean(llm)


@pytest.mark.parametrize("n", [0, -1, MAX_N + 1, 2.0, True])
def test_n_outside_its_range_is_refused_naming_the_field(llm, n):
    with pytest.raises(ValueError, match=rf"request 0: n: .* must be an int in \[1, {MAX_N}\]"):
        llm.generate([{"prompt_token_ids": [1, 2, 3]}], SamplingParams(n=n), use_tqdm=False)


def test_sample_seeds_wrap_inside_int64(llm):
    assert sample_seed(7, 3) == 10
    assert sample_seed(INT64_MAX, 1) == INT64_MIN and sample_seed(-1, 1) == 0
    [out] = llm.generate([{"prompt_token_ids": [5, 6, 7]}], SamplingParams(n=3, seed=INT64_MAX, max_tokens=2),
                         use_tqdm=False)
    assert out.error is None and len(out.outputs) == 3
    assert np.all([len(c.token_ids) == 2 for c in out.outputs])
