"""Structured outputs (xgrammar): constraints compiled once, masks applied on every step, the same tokens with
and without overlap scheduling, preemption and prefix groups; bad constraints are errors of their request."""

from __future__ import annotations

import re

import pytest

pytest.importorskip("xgrammar")

from batchllm import LLM, SamplingParams  # noqa: E402
from batchllm.sampling_params import StructuredOutputsParams as Constraint  # noqa: E402
from tests.conftest import mixed_prompts  # noqa: E402

TIGHT = dict(device="cpu", block_size=4, num_kv_blocks=48, max_num_batched_tokens=32, max_model_len=160,
             preemption_mode="recompute")


@pytest.fixture(scope="module")
def llm_pair(text_model):
    """A tiny random Llama with SmolLM2's tokenizer, with and without overlap scheduling, memory tight enough
    to preempt."""
    return {overlap: LLM(text_model, overlap_scheduling=overlap, **TIGHT) for overlap in (True, False)}


def _prompts(count: int) -> list[dict]:
    return [{"prompt_token_ids": p} for p in mixed_prompts(seed=11, count=count, vocab=900)]


def test_regex_and_choice_hold_and_match_across_overlap_and_preemption(llm_pair):
    regex = Constraint(regex=r"[a-z]{3,8}-[0-9]{2}")
    choice = Constraint(choice=["alpha", "beta", "gamma delta"])
    prompts = _prompts(12)
    # decode_length_hint=1: admission expects one token each, so the longer outputs force preemptions.
    params = [SamplingParams(temperature=0, max_tokens=30, decode_length_hint=1,
                             structured_outputs=regex if i % 2 else choice) for i in range(len(prompts))]
    runs = {}
    for overlap, llm in llm_pair.items():
        outs = llm.generate(prompts, params, use_tqdm=False)
        runs[overlap] = [o.outputs[0].token_ids for o in outs]
        for i, o in enumerate(outs):
            text = o.outputs[0].text
            if i % 2:
                assert re.fullmatch(regex.regex, text), text
            else:
                assert text in choice.choice, text
            assert o.outputs[0].finish_reason == "stop"
        assert llm.engine.scheduler.counters.preemptions > 0
    assert runs[True] == runs[False]
    # Unconstrained, the same model says something else: the masks did the work.
    free = llm_pair[True].generate(prompts[:2], SamplingParams(temperature=0, max_tokens=30), use_tqdm=False)
    assert free[0].outputs[0].text not in choice.choice


def test_sampled_json_object_parses_and_constraints_compile_once(llm_pair):
    import json

    llm = llm_pair[True]
    spec = Constraint(json={"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"],
                            "additionalProperties": False})
    before = llm.engine.structured.compiler.compilations
    outs = llm.generate(_prompts(16), [SamplingParams(temperature=1.0, seed=i, max_tokens=100, structured_outputs=spec)
                                      for i in range(16)], use_tqdm=False)
    for o in outs:
        if o.outputs[0].finish_reason == "stop":
            assert isinstance(json.loads(o.outputs[0].text)["n"], int)
    # A random model may spend its budget on the whitespace JSON allows; what ends must be valid.
    assert any(o.outputs[0].finish_reason == "stop" for o in outs)
    assert llm.engine.structured.compiler.compilations == before + 1  # one schema, one compile


def test_unconstrained_rows_in_the_same_batch_are_untouched(llm_pair):
    llm = llm_pair[True]
    prompts = _prompts(6)
    plain = SamplingParams(temperature=0, max_tokens=12)
    alone = [o.outputs[0].token_ids for o in llm.generate(prompts, plain, use_tqdm=False)]
    mixed = [plain if i % 2 == 0 else SamplingParams(temperature=0, max_tokens=12,
                                                      structured_outputs=Constraint(choice=["yes", "no"]))
             for i in range(len(prompts))]
    together = llm.generate(prompts, mixed, use_tqdm=False)
    assert [together[i].outputs[0].token_ids for i in range(0, 6, 2)] == alone[0::2]


@pytest.mark.parametrize("spec, message", [
    (Constraint(regex="(unclosed"), "regex: cannot be compiled"),
    (Constraint(json={"type": "no-such-type"}), "json: cannot be compiled"),
    (Constraint(json="{not json"), "json: cannot be compiled"),
    (Constraint(grammar="root ::= missing_rule"), "grammar: cannot be compiled"),
    (Constraint(regex="a", choice=["b"]), "exactly one of"),
])
def test_bad_constraints_name_the_request_and_run_nothing(llm_pair, spec, message):
    llm = llm_pair[False]
    with pytest.raises(ValueError, match=rf"request 1: structured_outputs: .*{re.escape(message)}"):
        llm.generate(_prompts(2), [SamplingParams(max_tokens=4), SamplingParams(max_tokens=4, structured_outputs=spec)],
                     use_tqdm=False)


def test_skipped_tokenizer_is_a_clear_error(tiny_models):
    llm = LLM(tiny_models["llama"], device="cpu", skip_tokenizer_init=True)
    with pytest.raises(ValueError, match="need the model's tokenizer"):
        llm.generate([{"prompt_token_ids": [1, 2, 3]}],
                     SamplingParams(max_tokens=4, structured_outputs=Constraint(choice=["a"])), use_tqdm=False)
