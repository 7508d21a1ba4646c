"""Penalties, biases, allowed tokens, min_p and top logprobs end to end, against transformers' generate.

Greedy decoding with the LLM (float32 CPU) must equal transformers' greedy generate with the same logits
processors, token for token, also with prefix groups (prompts sharing a 40-token prefix) and a KV cache tight
enough that requests are preempted (swap and recompute) while their newest token is still in flight.
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, LogitsProcessor, LogitsProcessorList

from batchllm import LLM, SamplingParams
from batchllm.runner.logits_processors import LogitsProcessors
from tests.conftest import FAMILIES, cut_after_eos

TIGHT = dict(device="cpu", skip_tokenizer_init=True, block_size=4, num_kv_blocks=40, max_num_batched_tokens=24,
             max_model_len=160)
MAX_TOKENS = 14


def _prompts() -> list[list[int]]:
    """Six prompts sharing a 40-token prefix (a prefix group), and two on their own."""
    g = torch.Generator().manual_seed(11)
    prefix = torch.randint(1, 999, (40,), generator=g).tolist()
    tails = [torch.randint(1, 999, (n,), generator=g).tolist() for n in (3, 9, 5, 14, 7, 11)]
    alone = [torch.randint(1, 999, (n,), generator=g).tolist() for n in (30, 18)]
    return [prefix + t for t in tails] + alone


def _mixed_params() -> list[SamplingParams]:
    greedy = dict(temperature=0, max_tokens=MAX_TOKENS, decode_length_hint=1)  # the hint makes it overcommit
    return [
        SamplingParams(**greedy, repetition_penalty=1.6),
        SamplingParams(**greedy, frequency_penalty=1.2, presence_penalty=0.8),
        SamplingParams(**greedy),  # no processing: a fast row among penalized ones
        SamplingParams(**greedy, logit_bias={17: 6.0, 250: 4.0, 3: -100.0}, repetition_penalty=1.3),
        SamplingParams(**greedy, allowed_token_ids=list(range(100, 400)), presence_penalty=2.0),
        SamplingParams(**greedy, repetition_penalty=0.6, frequency_penalty=-0.4),  # both encourage repeats
        SamplingParams(**greedy, repetition_penalty=1.2, frequency_penalty=0.5, presence_penalty=0.3,
                       logit_bias={42: 3.0}),
        SamplingParams(**greedy, presence_penalty=-1.5, logprobs=3),
    ]


class OpenAIPenalties(LogitsProcessor):
    """logits - frequency * count - presence * (count > 0), over generated tokens only (not the prompt)."""

    def __init__(self, prompt_len: int, frequency: float, presence: float) -> None:
        self.prompt_len, self.frequency, self.presence = prompt_len, frequency, presence

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        out = input_ids[:, self.prompt_len:]
        counts = torch.zeros_like(scores).scatter_add_(1, out, torch.ones_like(out, dtype=scores.dtype))
        return scores - self.frequency * counts - self.presence * (counts > 0).to(scores.dtype)


class AllowedTokens(LogitsProcessor):
    def __init__(self, allowed: list[int]) -> None:
        self.allowed = allowed

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        mask = torch.full_like(scores, float("-inf"))
        mask[:, self.allowed] = 0
        return scores + mask


def hf_reference(model, prompt: list[int], params: SamplingParams, max_new_tokens: int):
    """transformers' greedy generate with the processors of `params`: (tokens, processed scores per step)."""
    ids = torch.tensor([prompt])
    processors = LogitsProcessorList()
    if params.allowed_token_ids is not None:
        processors.append(AllowedTokens(params.allowed_token_ids))
    if params.frequency_penalty or params.presence_penalty:
        processors.append(OpenAIPenalties(len(prompt), params.frequency_penalty, params.presence_penalty))
    out = model.generate(
        ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False,
        pad_token_id=model.config.eos_token_id, repetition_penalty=params.repetition_penalty,
        sequence_bias={(t,): b for t, b in params.logit_bias.items()} if params.logit_bias else None,
        logits_processor=processors, return_dict_in_generate=True, output_scores=True,
    )
    tokens = cut_after_eos(model, out.sequences[0, len(prompt):].tolist())
    return tokens, [s[0] for s in out.scores[: len(tokens)]]


_REFERENCE: dict[str, list] = {}


def _reference(path: str) -> list:
    if path not in _REFERENCE:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        _REFERENCE[path] = [hf_reference(model, p, sp, MAX_TOKENS) for p, sp in zip(_prompts(), _mixed_params())]
    return _REFERENCE[path]


@pytest.mark.parametrize("preemption_mode", ["swap", "recompute"])
@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_with_penalties_equals_transformers_under_prefix_groups_and_preemption(
    tiny_models, family, preemption_mode
):
    llm = LLM(tiny_models[family], preemption_mode=preemption_mode, **TIGHT)
    outs = llm.generate([{"prompt_token_ids": p} for p in _prompts()], _mixed_params(), use_tqdm=False)
    counters = llm.engine.scheduler.counters
    assert counters.prefix_groups >= 1 and counters.preemptions > 0
    assert (counters.swaps if preemption_mode == "swap" else counters.recomputes) > 0
    reference = _reference(tiny_models[family])
    for i, (out, (tokens, _)) in enumerate(zip(outs, reference)):
        assert out.outputs[0].token_ids == tokens, f"request {i}"
    assert all(t in range(100, 400) for t in outs[4].outputs[0].token_ids)
    # the penalties matter: plain greedy differs for most of the penalized rows
    plain = llm.generate([{"prompt_token_ids": p} for p in _prompts()],
                         SamplingParams(temperature=0, max_tokens=MAX_TOKENS), use_tqdm=False)
    changed = [i for i in range(8) if plain[i].outputs[0].token_ids != outs[i].outputs[0].token_ids]
    assert 2 not in changed and len(changed) >= 5, changed


def test_no_overlap_gives_the_same_tokens(tiny_models):
    llm = LLM(tiny_models["llama"], preemption_mode="swap", overlap_scheduling=False, **TIGHT)
    outs = llm.generate([{"prompt_token_ids": p} for p in _prompts()], _mixed_params(), use_tqdm=False)
    assert [o.outputs[0].token_ids for o in outs] == [t for t, _ in _reference(tiny_models["llama"])]


@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_top_logprobs_equal_transformers_processed_scores(tiny_models, family):
    prompts = _prompts()[:4]
    params = [SamplingParams(temperature=0, max_tokens=10, logprobs=k, repetition_penalty=r, presence_penalty=p)
              for k, r, p in ((5, 1.4, 0.0), (1, 1.0, 0.7), (20, 1.0, 0.0), (0, 1.2, 0.4))]
    llm = LLM(tiny_models[family], device="cpu", skip_tokenizer_init=True)
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    model = AutoModelForCausalLM.from_pretrained(tiny_models[family], dtype=torch.float32).eval()
    for out, prompt, sp in zip(outs, prompts, params):
        completion = out.outputs[0]
        tokens, scores = hf_reference(model, prompt, sp, 10)
        assert completion.token_ids == tokens
        if sp.logprobs == 0:
            assert completion.top_logprobs is None and len(completion.logprobs) == len(tokens)
            continue
        assert len(completion.top_logprobs) == len(tokens)
        for step, (token, chosen_lp, top, score) in enumerate(zip(tokens, completion.logprobs,
                                                                  completion.top_logprobs, scores)):
            expected = score.log_softmax(-1)
            want_lp, want_ids = expected.topk(sp.logprobs)
            assert list(top) == want_ids.tolist(), step
            assert list(top.values()) == pytest.approx(want_lp.tolist(), abs=1e-4)
            assert list(top.values()) == sorted(top.values(), reverse=True)
            assert token in top and top[token] == pytest.approx(chosen_lp, abs=1e-6)  # greedy: the best one
            assert chosen_lp == pytest.approx(expected[token].item(), abs=1e-4)


def test_min_p(tiny_models):
    llm = LLM(tiny_models["mistral"], device="cpu", skip_tokenizer_init=True)
    prompts = [{"prompt_token_ids": p} for p in _prompts()[:5]]
    greedy = [o.outputs[0].token_ids for o in llm.generate(prompts, SamplingParams(temperature=0, max_tokens=10),
                                                           use_tqdm=False)]
    # min_p = 1 keeps only the most likely token: sampling at any temperature is greedy
    only_top = llm.generate(prompts, SamplingParams(temperature=1.7, min_p=1.0, seed=5, max_tokens=10), use_tqdm=False)
    assert [o.outputs[0].token_ids for o in only_top] == greedy
    # otherwise every sampled token is at least min_p x as likely (at the temperature) as the top one
    params = [SamplingParams(temperature=1.3, min_p=0.25, seed=i, max_tokens=10) for i in range(5)]
    sampled = [o.outputs[0].token_ids for o in llm.generate(prompts, params, use_tqdm=False)]
    assert sampled == [o.outputs[0].token_ids for o in llm.generate(prompts, params, use_tqdm=False)]
    assert sampled != greedy
    unrestricted = [o.outputs[0].token_ids for o in llm.generate(
        prompts, [SamplingParams(temperature=1.3, seed=i, max_tokens=10) for i in range(5)], use_tqdm=False)]
    assert unrestricted != sampled
    model = AutoModelForCausalLM.from_pretrained(tiny_models["mistral"], dtype=torch.float32).eval()
    for prompt, tokens in zip(prompts, sampled):
        ids = prompt["prompt_token_ids"]
        with torch.no_grad():
            logits = model(torch.tensor([ids + tokens])).logits[0, len(ids) - 1 : -1]
        probs = (logits / 1.3).softmax(-1)
        chosen = probs.gather(1, torch.tensor(tokens).unsqueeze(1)).squeeze(1)
        assert (chosen >= 0.25 * probs.max(-1).values * (1 - 1e-4)).all()


def test_a_batch_without_processing_takes_the_fast_path(tiny_models, monkeypatch):
    llm = LLM(tiny_models["qwen2"], preemption_mode="swap", **TIGHT)
    processors = llm.engine.runner.sampler.logits_processors
    results = []
    real_apply = LogitsProcessors.apply

    def spy(self, logits, requests):
        result = real_apply(self, logits, requests)
        results.append(result)
        return result

    monkeypatch.setattr(LogitsProcessors, "apply", spy)
    params = SamplingParams(temperature=0.8, top_k=20, top_p=0.9, seed=1, max_tokens=8)
    llm.generate([{"prompt_token_ids": p} for p in _prompts()], params, use_tqdm=False)
    assert results and all(r is None for r in results)
    assert processors.num_slots_in_use == 0 and processors.output_counts is None and processors.static_bias is None
    results.clear()
    llm.generate([{"prompt_token_ids": p} for p in _prompts()], _mixed_params(), use_tqdm=False)
    assert any(r is not None for r in results) and processors.output_counts is not None


def test_an_aborted_batch_leaves_no_penalty_state(tiny_models, monkeypatch):
    llm = LLM(tiny_models["llama"], **TIGHT)
    checker = llm.engine.stop_checker
    real, calls = checker.check, [0]

    def failing(request):
        calls[0] += 1
        if calls[0] > 20:
            raise KeyboardInterrupt()
        return real(request)

    monkeypatch.setattr(checker, "check", failing)
    with pytest.raises(KeyboardInterrupt):
        llm.generate([{"prompt_token_ids": p} for p in _prompts()], _mixed_params(), use_tqdm=False)
    assert llm.engine.runner.sampler.logits_processors.num_slots_in_use == 0
    monkeypatch.undo()
    outs = llm.generate([{"prompt_token_ids": p} for p in _prompts()], _mixed_params(), use_tqdm=False)
    assert [o.outputs[0].token_ids for o in outs] == [t for t, _ in _reference(tiny_models["llama"])]


def test_bad_words_ban_one_token_words_and_refuse_longer_ones(text_model):
    llm = LLM(text_model, device="cpu")
    tokenizer = llm.get_tokenizer()
    prompt = {"prompt_token_ids": _prompts()[0]}
    base = llm.generate(prompt, SamplingParams(temperature=0, max_tokens=12), use_tqdm=False)[0].outputs[0]

    def one_token(text: str) -> bool:
        return len(tokenizer.encode(text, add_special_tokens=False)) == 1

    # a word of the output that is one token bare and after a space (vLLM bans both forms)
    word = next(w for w in (tokenizer.decode([t]).strip() for t in base.token_ids)
                if w and one_token(w) and one_token(" " + w))
    params = SamplingParams(temperature=0, max_tokens=12, bad_words=[word])
    assert params.update_from_tokenizer(tokenizer) == [] and len(params.bad_words_token_ids) == 2
    assert set(params.bad_words_token_ids) & set(base.token_ids)
    banned = llm.generate(prompt, params, use_tqdm=False)[0].outputs[0]
    assert not set(params.bad_words_token_ids) & set(banned.token_ids) and banned.token_ids != base.token_ids
    # bare, the first output word here is two tokens: refused (vLLM would ban it as a sequence)
    long_word = next(w for w in (tokenizer.decode([t]).strip() for t in base.token_ids) if w and not one_token(w))
    with pytest.raises(ValueError, match=f"bad_words: '{long_word}' is [0-9]+ tokens .*only one-token words"):
        llm.generate(prompt, SamplingParams(bad_words=[long_word]), use_tqdm=False)
    with pytest.raises(ValueError, match="bad_words: need the tokenizer"):
        LLM(text_model, device="cpu", skip_tokenizer_init=True).generate(
            prompt, SamplingParams(bad_words=[word]), use_tqdm=False)


@pytest.mark.parametrize("overlap", [True, False])
def test_min_tokens_keeps_the_stop_token_out_of_the_first_min_tokens(tiny_models, overlap):
    """Only tokens 7 and 9 may be sampled and 9 is strongly preferred, but it stops the request: with
    min_tokens=5 the output is five 7s, then the 9."""
    llm = LLM(tiny_models["llama"], device="cpu", skip_tokenizer_init=True, overlap_scheduling=overlap)
    params = SamplingParams(temperature=0, max_tokens=20, min_tokens=5, stop_token_ids=[9],
                            allowed_token_ids=[7, 9], logit_bias={9: 100.0})
    out = llm.generate([{"prompt_token_ids": [1, 2, 3, 4]}], params, use_tqdm=False)[0].outputs[0]
    assert out.token_ids == [7, 7, 7, 7, 7, 9] and out.finish_reason == "stop"
