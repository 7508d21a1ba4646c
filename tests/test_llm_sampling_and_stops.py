"""Seeded sampling, stop conditions and finish reasons through the public API."""

from __future__ import annotations

import json

import pytest
import torch

from batchllm import LLM, SamplingParams
from tests.conftest import mixed_prompts


@pytest.fixture(scope="module")
def llm(tiny_models):
    return LLM(tiny_models["llama"], device="cpu", skip_tokenizer_init=True)


def _ids(outputs):
    return [o.outputs[0].token_ids for o in outputs]


def test_seeded_sampling_is_reproducible_and_batch_independent(llm):
    prompts = [{"prompt_token_ids": p} for p in mixed_prompts(seed=3, count=6)]
    params = [SamplingParams(temperature=1.0, top_k=50, top_p=0.9, seed=100 + i, max_tokens=12) for i in range(6)]
    first = _ids(llm.generate(prompts, params, use_tqdm=False))
    again = _ids(llm.generate(prompts, params, use_tqdm=False))
    assert first == again
    # the same request in a different batch (reversed, fewer neighbours) samples the same tokens
    alone = _ids(llm.generate(prompts[::-1][:3], params[::-1][:3], use_tqdm=False))
    assert alone == first[::-1][:3]
    other_seed = _ids(llm.generate(prompts, [SamplingParams(temperature=1.0, seed=999 + i, max_tokens=12)
                                             for i in range(6)], use_tqdm=False))
    assert other_seed != first


def test_degenerate_sampling_equals_greedy(llm):
    prompts = [{"prompt_token_ids": p} for p in mixed_prompts(seed=4, count=5)]
    greedy = _ids(llm.generate(prompts, SamplingParams(temperature=0, max_tokens=10), use_tqdm=False))
    top1 = _ids(llm.generate(prompts, SamplingParams(temperature=0.8, top_k=1, seed=1, max_tokens=10), use_tqdm=False))
    tiny_p = _ids(llm.generate(prompts, SamplingParams(temperature=0.8, top_p=1e-6, seed=1, max_tokens=10), use_tqdm=False))
    assert top1 == greedy and tiny_p == greedy


def test_high_temperature_differs_from_greedy(llm):
    prompts = [{"prompt_token_ids": p} for p in mixed_prompts(seed=5, count=4)]
    greedy = _ids(llm.generate(prompts, SamplingParams(temperature=0, max_tokens=10), use_tqdm=False))
    hot = _ids(llm.generate(prompts, SamplingParams(temperature=5.0, seed=3, max_tokens=10), use_tqdm=False))
    assert hot != greedy


def test_max_tokens_and_stop_token_ids(llm):
    prompt = {"prompt_token_ids": mixed_prompts(seed=6, count=1)[0]}
    base = llm.generate(prompt, SamplingParams(temperature=0, max_tokens=12), use_tqdm=False)[0].outputs[0]
    assert base.finish_reason == "length" and len(base.token_ids) == 12
    stop_at = base.token_ids[4]
    first_index = base.token_ids.index(stop_at)
    out = llm.generate(prompt, SamplingParams(temperature=0, max_tokens=12, stop_token_ids=[stop_at]),
                       use_tqdm=False)[0].outputs[0]
    assert out.token_ids == base.token_ids[: first_index + 1]
    assert out.finish_reason == "stop" and out.stop_reason == stop_at
    # min_tokens bans the stop token until enough tokens exist
    delayed = llm.generate(prompt, SamplingParams(temperature=0, max_tokens=12, stop_token_ids=[stop_at],
                                                  min_tokens=first_index + 2), use_tqdm=False)[0].outputs[0]
    assert len(delayed.token_ids) >= first_index + 2
    assert stop_at not in delayed.token_ids[: first_index + 1]


def test_logprobs_match_transformers(llm, tiny_models):
    from transformers import AutoModelForCausalLM

    prompt = mixed_prompts(seed=8, count=1)[0]
    out = llm.generate({"prompt_token_ids": prompt}, SamplingParams(temperature=0, max_tokens=6, logprobs=1),
                       use_tqdm=False)[0].outputs[0]
    hf = AutoModelForCausalLM.from_pretrained(tiny_models["llama"], dtype=torch.float32)
    with torch.no_grad():
        logits = hf(torch.tensor([prompt + out.token_ids])).logits[0].log_softmax(-1)
    expected = [logits[len(prompt) - 1 + i, t].item() for i, t in enumerate(out.token_ids)]
    assert out.logprobs == pytest.approx(expected, abs=1e-4)
    assert out.cumulative_logprob == pytest.approx(sum(expected), abs=1e-3)


def test_eos_stops_and_ignore_eos_continues(tmp_path, tiny_models):
    import shutil

    folder = tmp_path / "eos_model"
    shutil.copytree(tiny_models["qwen2"], folder)
    prompt = {"prompt_token_ids": mixed_prompts(seed=9, count=1)[0]}
    params = SamplingParams(temperature=0, max_tokens=10)
    base = LLM(str(folder), device="cpu", skip_tokenizer_init=True).generate(prompt, params, use_tqdm=False)[0]
    eos = base.outputs[0].token_ids[3]
    for name in ("config.json", "generation_config.json"):
        cfg = json.loads((folder / name).read_text())
        cfg["eos_token_id"] = eos
        (folder / name).write_text(json.dumps(cfg))
    llm = LLM(str(folder), device="cpu", skip_tokenizer_init=True)
    stopped = llm.generate(prompt, params, use_tqdm=False)[0].outputs[0]
    assert stopped.finish_reason == "stop" and stopped.token_ids[-1] == eos
    assert stopped.token_ids == base.outputs[0].token_ids[: base.outputs[0].token_ids.index(eos) + 1]
    ignored = llm.generate(prompt, SamplingParams(temperature=0, max_tokens=10, ignore_eos=True), use_tqdm=False)[0]
    assert ignored.outputs[0].token_ids == base.outputs[0].token_ids
    assert ignored.outputs[0].finish_reason == "length"


def test_stop_strings_truncate_text(text_model):
    llm = LLM(text_model, device="cpu")
    prompts = ["The capital of France is", "Once upon a time"]
    base = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=24), use_tqdm=False)
    for prompt, out in zip(prompts, base):
        text = out.outputs[0].text
        assert text == llm.get_tokenizer().decode(out.outputs[0].token_ids, skip_special_tokens=True)
        stop = text[len(text) // 2 : len(text) // 2 + 3]
        if not stop.strip():
            continue
        cut = llm.generate(prompt, SamplingParams(temperature=0, max_tokens=24, stop=[stop, "\u2603never"]),
                           use_tqdm=False)[0].outputs[0]
        assert cut.finish_reason == "stop" and cut.stop_reason == stop
        assert cut.text == text[: text.index(stop)]
        assert out.outputs[0].token_ids[: len(cut.token_ids)] == cut.token_ids
        kept = llm.generate(prompt, SamplingParams(temperature=0, max_tokens=24, stop=stop,
                                                   include_stop_str_in_output=True), use_tqdm=False)[0].outputs[0]
        assert kept.text == text[: text.index(stop) + len(stop)]


def test_outputs_in_input_order_with_metrics(text_model):
    llm = LLM(text_model, device="cpu")
    prompts = ["a", "a much longer prompt " * 5, "mid sized prompt"]
    outputs = llm.generate(prompts, [SamplingParams(temperature=0, max_tokens=n) for n in (9, 2, 5)], use_tqdm=False)
    assert [o.prompt for o in outputs] == prompts
    assert [len(o.outputs[0].token_ids) for o in outputs] == [9, 2, 5]
    for o in outputs:
        assert o.prompt_token_ids == llm.get_tokenizer()(o.prompt).input_ids
        m = o.metrics
        assert m.arrival_time <= m.first_scheduled_time <= m.first_token_time <= m.finished_time
        assert o.finished
