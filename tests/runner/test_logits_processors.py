"""Each logits processor against transformers' own (or OpenAI's formula), and the device state over steps."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import MinPLogitsWarper, RepetitionPenaltyLogitsProcessor, SequenceBiasLogitsProcessor

from batchllm.core.request import PENDING_TOKEN, Request, RequestStatus
from batchllm.runner.logits_processors import (
    LogitsProcessors,
    apply_frequency_presence,
    apply_min_p,
    apply_repetition_penalty,
    static_bias_row,
)
from batchllm.runner.sampler import Sampler
from batchllm.sampling_params import SamplingParams

VOCAB = 50


def _logits(seed: int, rows: int = 4) -> torch.Tensor:
    return torch.randn(rows, VOCAB, generator=torch.Generator().manual_seed(seed)) * 3


def _ids(seed: int, rows: int, length: int) -> torch.Tensor:
    return torch.randint(0, VOCAB, (rows, length), generator=torch.Generator().manual_seed(seed + 1))


def _seen(ids: torch.Tensor) -> torch.Tensor:
    return torch.zeros(ids.shape[0], VOCAB, dtype=torch.bool).scatter_(1, ids, True)


def _request(index: int, params: SamplingParams, prompt: list[int]) -> Request:
    return Request(str(index), None, prompt, params, max_output_tokens=64, arrival_index=index)


def _openai_reference(logits: torch.Tensor, output_ids: list[list[int]], frequency: float, presence: float):
    """OpenAI's documented formula, one row and one token at a time."""
    out = logits.clone()
    for row, ids in enumerate(output_ids):
        for token in set(ids):
            count = ids.count(token)
            out[row, token] -= frequency * count + presence * (count > 0)
    return out


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("penalty", [0.5, 1.0, 1.3, 2.0])
def test_repetition_penalty_equals_transformers(seed, penalty):
    logits, ids = _logits(seed), _ids(seed, 4, 12)
    expected = RepetitionPenaltyLogitsProcessor(penalty)(ids, logits.clone())
    got = apply_repetition_penalty(logits.clone(), torch.full((4,), penalty), _seen(ids))
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("frequency,presence", [(0.5, 0.0), (0.0, 1.5), (-0.7, 0.4), (2.0, -2.0)])
def test_frequency_presence_equal_openai_formula(seed, frequency, presence):
    logits, ids = _logits(seed), _ids(seed, 4, 15)
    counts = torch.zeros(4, VOCAB, dtype=torch.int32).scatter_add_(1, ids, torch.ones_like(ids, dtype=torch.int32))
    got = apply_frequency_presence(logits.clone(), counts, torch.full((4,), frequency), torch.full((4,), presence))
    torch.testing.assert_close(got, _openai_reference(logits, ids.tolist(), frequency, presence))


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("min_p", [0.0, 0.05, 0.3, 0.9, 1.0])
@pytest.mark.parametrize("temperature", [1.0, 0.5, 2.0])
def test_min_p_equals_transformers_after_temperature(seed, min_p, temperature):
    logits = _logits(seed)
    # transformers applies min_p to the temperature-scaled scores; ours tests the unscaled ones
    expected = torch.isfinite(MinPLogitsWarper(min_p)(None, logits / temperature)) if min_p > 0 else \
        torch.ones_like(logits, dtype=torch.bool)
    got = apply_min_p(logits.clone(), torch.full((4,), min_p), torch.full((4,), temperature))
    assert torch.equal(torch.isfinite(got), expected)
    kept = torch.isfinite(got)
    assert torch.equal(got[kept], logits[kept]) and kept.any(dim=-1).all()


def test_logit_bias_equals_sequence_bias_and_masks_allowed_and_bad_words():
    logits = _logits(0)
    bias = {3: 5.0, 17: -100.0, 40: 2.5}
    expected = SequenceBiasLogitsProcessor({(t,): b for t, b in bias.items()})(_ids(0, 4, 3), logits.clone())
    got = logits + static_bias_row(SamplingParams(logit_bias=bias), VOCAB)
    torch.testing.assert_close(got, expected)
    row = static_bias_row(SamplingParams(allowed_token_ids=[1, 3, 5], logit_bias={3: 1.0}), VOCAB)
    assert torch.isfinite(row).nonzero().flatten().tolist() == [1, 3, 5] and row[3] == 1.0 and row[1] == 0
    params = SamplingParams(bad_words=["x"])
    params._bad_words_ids = (None, [7, 9])  # what update_from_tokenizer leaves
    assert (~torch.isfinite(static_bias_row(params, VOCAB))).nonzero().flatten().tolist() == [7, 9]


def test_penalty_state_over_steps_equals_transformers_and_is_updated_on_the_device():
    """Several decode steps through LogitsProcessors: counts come from finish(), never from the host."""
    params = [
        SamplingParams(temperature=0, repetition_penalty=1.4),
        SamplingParams(temperature=0, frequency_penalty=0.6, presence_penalty=0.3),
        SamplingParams(temperature=0),  # a fast row in between: untouched
        SamplingParams(temperature=0, logit_bias={5: 4.0, 6: -3.0}, repetition_penalty=0.8, frequency_penalty=-0.5),
    ]
    prompts = [_ids(i, 1, 6)[0].tolist() for i in range(4)]
    requests = [_request(i, p, prompt) for i, (p, prompt) in enumerate(zip(params, prompts))]
    processors = LogitsProcessors(torch.device("cpu"))
    outputs: list[list[int]] = [[] for _ in requests]
    for step in range(6):
        logits = _logits(100 + step)
        expected = logits.clone()
        for row, (p, prompt, out) in enumerate(zip(params, prompts, outputs)):
            if p.logit_bias:
                expected[row : row + 1] = SequenceBiasLogitsProcessor({(t,): b for t, b in p.logit_bias.items()})(
                    torch.tensor([prompt]), expected[row : row + 1])
            if p.repetition_penalty != 1.0:
                expected[row : row + 1] = RepetitionPenaltyLogitsProcessor(p.repetition_penalty)(
                    torch.tensor([prompt + out]), expected[row : row + 1])
            expected[row : row + 1] = _openai_reference(expected[row : row + 1], [out], p.frequency_penalty,
                                                        p.presence_penalty)
        # the host sees only placeholders, as under overlap scheduling: the state must not need the tokens
        for request, out in zip(requests, outputs):
            request.token_ids = request.prompt_token_ids + [PENDING_TOKEN] * len(out)
        batch = processors.apply(logits, requests)
        torch.testing.assert_close(logits, expected)
        chosen = logits.argmax(dim=-1)
        assert batch.finish(chosen) is None  # nobody asked for logprobs
        for out, token in zip(outputs, chosen.tolist()):
            out.append(token)
    assert processors.num_slots_in_use == 3  # the fast row has no state
    counts = processors.output_counts[[processors._slots[requests[i]] for i in (0, 1, 3)]]
    for row, i in enumerate((0, 1, 3)):
        assert counts[row].tolist() == torch.bincount(torch.tensor(outputs[i]), minlength=VOCAB).tolist()


def test_fast_path_builds_nothing():
    processors = LogitsProcessors(torch.device("cpu"))
    requests = [_request(i, SamplingParams(temperature=t, top_k=5), [1, 2]) for i, t in enumerate((0, 0.8))]
    assert processors.apply(_logits(1, 2), requests) is None
    assert processors.num_slots_in_use == 0 and processors.output_counts is None and processors.static_bias is None
    # logprobs or min_p alone need no state either, but they are not the fast path
    requests[1].params = SamplingParams(temperature=0.8, min_p=0.2, logprobs=2)
    assert processors.apply(_logits(1, 2), requests) is not None
    assert processors.num_slots_in_use == 0


def test_slots_of_finished_requests_are_reused_before_growing():
    processors = LogitsProcessors(torch.device("cpu"))
    params = SamplingParams(temperature=0, presence_penalty=1.0)
    first = [_request(i, params, [i]) for i in range(8)]
    processors.apply(_logits(0, 8), first).finish(torch.arange(8))
    assert processors.capacity == 8
    for request in first[:3]:
        request.status = RequestStatus.FINISHED
    later = [_request(10 + i, params, [i]) for i in range(3)]
    logits = _logits(1, 3)
    processors.apply(logits, later)
    assert processors.capacity == 8 and processors.num_slots_in_use == 8
    # a reused slot starts from zero counts: the new requests are not penalized for the old tokens
    torch.testing.assert_close(logits, _logits(1, 3))


def test_logprobs_are_the_processed_distribution_sorted_with_the_chosen_token():
    sampler = Sampler([], seed=0, device=torch.device("cpu"))
    params = [SamplingParams(temperature=0, logprobs=4, repetition_penalty=1.5),
              SamplingParams(temperature=0.7, seed=3, logprobs=0, min_p=0.1),
              SamplingParams(temperature=0)]
    requests = [_request(i, p, [1, 2, 3]) for i, p in enumerate(params)]
    logits = _logits(7, 3)
    processed = logits.clone()
    processed[0:1] = RepetitionPenaltyLogitsProcessor(1.5)(torch.tensor([[1, 2, 3]]), processed[0:1])
    chosen, logprobs = sampler.sample(logits.clone(), requests)
    reference = processed.log_softmax(-1)  # before temperature and min_p
    torch.testing.assert_close(logprobs.chosen, reference.gather(1, chosen.unsqueeze(1)).squeeze(1))
    top_lp, top_ids = reference.topk(4, dim=-1)
    assert torch.equal(logprobs.top_ids, top_ids)
    torch.testing.assert_close(logprobs.top_logprobs, top_lp)
    assert (logprobs.top_logprobs[:, :-1] >= logprobs.top_logprobs[:, 1:]).all()
    assert logprobs.top_ids[0, 0] == chosen[0]  # greedy: the chosen token is the best alternative
    # the sampled row's token survived min_p at its temperature
    probs = (processed[1] / 0.7).softmax(-1)
    assert probs[chosen[1]] >= 0.1 * probs.max()


def test_min_p_one_samples_the_greedy_token():
    sampler = Sampler([], seed=0, device=torch.device("cpu"))
    logits = _logits(9, 4)
    requests = [_request(i, SamplingParams(temperature=1.5, seed=i, min_p=1.0), [1]) for i in range(4)]
    chosen, _ = sampler.sample(logits.clone(), requests)
    assert torch.equal(chosen, logits.argmax(-1))


def test_validation_messages_name_the_field():
    errors = SamplingParams(presence_penalty=2.5, frequency_penalty=math.nan, repetition_penalty=0.0,
                            logit_bias={"3": 1.0, 4: 101}, min_p=-0.1, allowed_token_ids=[], logprobs=21,
                            bad_words="word").validation_errors(VOCAB)
    fields = [e.split(":")[0] for e in errors]
    assert fields == ["logprobs", "presence_penalty", "frequency_penalty", "repetition_penalty", "min_p",
                      "logit_bias", "logit_bias", "allowed_token_ids", "bad_words"]
    assert SamplingParams(allowed_token_ids=[VOCAB]).validation_errors(VOCAB)[0].startswith("allowed_token_ids")
    assert SamplingParams(logprobs=20, presence_penalty=-2, frequency_penalty=2, repetition_penalty=3.0,
                          logit_bias={0: -100, 49: 100}, min_p=1.0, allowed_token_ids=[0]).validation_errors(VOCAB) == []
