"""A failed, interrupted or abandoned call leaves the LLM clean; a failure of one request fails only that request."""

from __future__ import annotations

import pytest

from batchllm import LLM, SamplingParams
from tests.conftest import mixed_prompts

# Tight memory and a small token budget: prefix groups, chunked prefills, swaps and preemptions are all in
# progress when the failure hits, so the abort has every kind of state to clean up.
TIGHT = dict(device="cpu", skip_tokenizer_init=True, block_size=4, num_kv_blocks=40, max_num_batched_tokens=24,
             max_model_len=160, preemption_mode="swap")
GREEDY = SamplingParams(temperature=0.0, max_tokens=10, decode_length_hint=1)


def _batch(seed: int, count: int = 8) -> list[dict]:
    return [{"prompt_token_ids": p} for p in mixed_prompts(seed=seed, count=count)]


def _ids(outputs) -> list[list[int]]:
    return [o.outputs[0].token_ids for o in outputs]


@pytest.fixture(scope="module")
def fresh(tiny_models) -> dict[tuple[int, bool], list[list[int]]]:
    """What a fresh LLM returns for the batches below (the same for either overlap setting)."""
    results = {}
    for overlap in (True, False):
        llm = LLM(tiny_models["qwen2"], overlap_scheduling=overlap, **TIGHT)
        for seed in (1, 2):
            results[seed, overlap] = _ids(llm.generate(_batch(seed), GREEDY, use_tqdm=False))
    assert results[1, True] == results[1, False] and results[2, True] == results[2, False]
    return results


def _assert_clean(llm: LLM) -> None:
    engine = llm.engine
    assert not engine.has_unfinished()
    assert engine.pool.num_used == 0 and engine.pool.num_free == engine.pool.num_blocks
    host = engine.scheduler.host_pool
    assert host is None or host.num_free == host.num_blocks


def _fail_after(calls: int, error: BaseException, original):
    count = [0]

    def failing(*args, **kwargs):
        count[0] += 1
        if count[0] > calls:
            raise error
        return original(*args, **kwargs)

    return failing


@pytest.mark.parametrize("overlap", [True, False])
@pytest.mark.parametrize(
    "target, error",
    [("runner.forward", RuntimeError("device fell over")), ("stop_checker.check", KeyboardInterrupt())],
)
def test_failed_call_leaves_a_clean_llm(tiny_models, fresh, monkeypatch, overlap, target, error):
    llm = LLM(tiny_models["qwen2"], overlap_scheduling=overlap, **TIGHT)
    owner_name, method = target.split(".")
    owner = getattr(llm.engine, owner_name)
    monkeypatch.setattr(owner, method, _fail_after(12, error, getattr(owner, method)))
    with pytest.raises(type(error)):
        llm.generate(_batch(1), GREEDY, use_tqdm=False)
    assert llm.engine.num_iterations > 0  # it failed midway, not before compute
    _assert_clean(llm)
    monkeypatch.undo()
    assert _ids(llm.generate(_batch(2), GREEDY, use_tqdm=False)) == fresh[2, overlap]
    _assert_clean(llm)
    assert _ids(llm.generate(_batch(1), GREEDY, use_tqdm=False)) == fresh[1, overlap]


def test_interrupt_in_the_consumer_aborts_the_call(tiny_models, fresh, monkeypatch):
    """A KeyboardInterrupt outside the engine (here: in the progress bar) aborts the call's requests too."""
    import batchllm.llm as llm_module

    llm = LLM(tiny_models["qwen2"], **TIGHT)
    real_tqdm = llm_module.tqdm

    class InterruptedBar(real_tqdm):
        def update(self, n=1):
            raise KeyboardInterrupt

    monkeypatch.setattr(llm_module, "tqdm", InterruptedBar)
    with pytest.raises(KeyboardInterrupt):
        llm.generate(_batch(1), GREEDY, use_tqdm=False)
    _assert_clean(llm)
    monkeypatch.undo()
    assert _ids(llm.generate(_batch(2), GREEDY, use_tqdm=False)) == fresh[2, True]


@pytest.mark.parametrize("how", ["break", "close", "drop"])
def test_abandoned_run_encoded_leaves_a_clean_llm(tiny_models, fresh, how):
    llm = LLM(tiny_models["qwen2"], **TIGHT)
    encoded = [(None, p["prompt_token_ids"]) for p in _batch(1)]
    stream = llm.run_encoded(encoded, [GREEDY] * len(encoded))
    next(stream)
    assert llm.engine.has_unfinished()  # the rest of the batch is still in the engine
    if how == "close":
        stream.close()
    elif how == "drop":
        del stream  # CPython closes it at once (GeneratorExit at its yield)
    else:
        for _ in stream:
            break
        stream.close()
    _assert_clean(llm)
    assert _ids(llm.generate(_batch(2), GREEDY, use_tqdm=False)) == fresh[2, True]


def test_second_call_while_a_generator_runs_is_refused(tiny_models, fresh):
    llm = LLM(tiny_models["qwen2"], **TIGHT)
    encoded = [(None, p["prompt_token_ids"]) for p in _batch(1)]
    stream = llm.run_encoded(encoded, [GREEDY] * len(encoded))
    first = [next(stream)]
    with pytest.raises(RuntimeError, match="exhaust it or call its close"):
        llm.generate(_batch(2), GREEDY, use_tqdm=False)
    first += list(stream)  # the refused call did not disturb the running one
    assert [ids for _, ids in sorted((i, o.outputs[0].token_ids) for i, o in first)] == fresh[1, True]
    _assert_clean(llm)


@pytest.mark.parametrize("overlap", [True, False])
def test_failure_of_one_request_fails_only_that_request(tiny_models, fresh, monkeypatch, overlap):
    llm = LLM(tiny_models["qwen2"], overlap_scheduling=overlap, **TIGHT)
    check = llm.engine.stop_checker.check

    def check_or_fail(request):
        if request.arrival_index == 2 and request.num_output_tokens >= 3:
            raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "bad byte from the tokenizer")
        return check(request)

    monkeypatch.setattr(llm.engine.stop_checker, "check", check_or_fail)
    outputs = llm.generate(_batch(1, count=5), GREEDY, use_tqdm=False)
    failed = outputs[2]
    assert failed.outputs[0].finish_reason == "error" and failed.finished
    assert "UnicodeDecodeError" in failed.error and "bad byte from the tokenizer" in failed.error
    assert failed.outputs[0].token_ids == fresh[1, overlap][2][:3]  # the tokens received before the failure
    for index in (0, 1, 3, 4):
        assert outputs[index].error is None and outputs[index].outputs[0].finish_reason in ("stop", "length")
        assert outputs[index].outputs[0].token_ids == fresh[1, overlap][index]
    _assert_clean(llm)
    monkeypatch.undo()
    assert _ids(llm.generate(_batch(2), GREEDY, use_tqdm=False)) == fresh[2, overlap]


def test_failed_decode_of_one_output_fails_only_that_output(tiny_models, monkeypatch):
    llm = LLM(tiny_models["qwen2"], **TIGHT)
    clean = llm.generate(_batch(1, count=5), GREEDY, use_tqdm=False)
    decode = llm.engine.stop_checker.decode

    def decode_or_fail(request, drop_last=False):
        if request.arrival_index == 4:
            raise ValueError("cannot detokenize")
        return decode(request, drop_last)

    monkeypatch.setattr(llm.engine.stop_checker, "decode", decode_or_fail)
    outputs = llm.generate(_batch(1, count=5), GREEDY, use_tqdm=False)
    assert outputs[4].outputs[0].finish_reason == "error" and "ValueError: cannot detokenize" in outputs[4].error
    assert outputs[4].outputs[0].text == "" and outputs[4].outputs[0].token_ids == clean[4].outputs[0].token_ids
    assert _ids(outputs[:4]) == _ids(clean[:4]) and all(o.error is None for o in outputs[:4])
    _assert_clean(llm)


def test_a_seed_outside_the_validated_range_still_samples_alone(tiny_models):
    """run_encoded trusts its caller's validation; the sampler reduces any int seed mod 2**64 (its noise is
    hashed from it), so a seed validation would refuse still runs, and the rest of the batch is untouched."""
    llm = LLM(tiny_models["qwen2"], **TIGHT)
    encoded = [(None, p["prompt_token_ids"]) for p in _batch(1, count=5)]
    params = [GREEDY] * 5
    params[1] = SamplingParams(temperature=0.8, seed=2**64, max_tokens=10)
    outputs = dict(llm.run_encoded(encoded, params))
    assert outputs[1].error is None and len(outputs[1].outputs[0].token_ids) > 0
    clean = LLM(tiny_models["qwen2"], **TIGHT).generate(_batch(1, count=5), GREEDY, use_tqdm=False)
    for i in (0, 2, 3, 4):
        assert outputs[i].error is None and outputs[i].outputs[0].token_ids == clean[i].outputs[0].token_ids
    _assert_clean(llm)
