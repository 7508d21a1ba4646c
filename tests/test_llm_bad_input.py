"""Bad input gets a ValueError naming the request and field, before any compute."""

from __future__ import annotations

import json

import pytest

from batchllm import LLM, SamplingParams


@pytest.fixture(scope="module")
def llm(tiny_models):
    return LLM(tiny_models["llama"], device="cpu", skip_tokenizer_init=True, max_model_len=64)


@pytest.mark.parametrize(
    "prompt, params, message",
    [
        ({"prompt_token_ids": []}, SamplingParams(), r"request 1: prompt: is empty"),
        ({"prompt_token_ids": list(range(1, 80))}, SamplingParams(), r"request 1: prompt: 79 tokens, but max_model_len=64"),
        ({"prompt_token_ids": [5, 1000, -1]}, SamplingParams(), r"request 1: prompt_token_ids: \[1000, -1\]"),
        ({"prompt_token_ids": [5]}, SamplingParams(temperature=-1), r"request 1: temperature"),
        ({"prompt_token_ids": [5]}, SamplingParams(top_p=0.0), r"request 1: top_p"),
        ({"prompt_token_ids": [5]}, SamplingParams(top_k=-3), r"request 1: top_k"),
        ({"prompt_token_ids": [5]}, SamplingParams(max_tokens=0), r"request 1: max_tokens"),
        ({"prompt_token_ids": [5]}, SamplingParams(min_tokens=9, max_tokens=3), r"request 1: min_tokens"),
        ({"prompt_token_ids": [5]}, SamplingParams(stop_token_ids=[5000]), r"request 1: stop_token_ids"),
        ({"prompt_token_ids": [5]}, SamplingParams(n=0), r"request 1: n"),
        ("text prompt", SamplingParams(), r"request 1: prompt: text given but the tokenizer was skipped"),
        ({"oops": 1}, SamplingParams(), r"request 1: prompt: a dict prompt needs"),
    ],
)
def test_bad_request_names_index_and_field(llm, prompt, params, message):
    good = {"prompt_token_ids": [1, 2, 3]}
    with pytest.raises(ValueError, match=message):
        llm.generate([good, prompt], [SamplingParams(), params], use_tqdm=False)
    assert not llm.engine.has_unfinished()  # nothing was queued
    assert llm.engine.num_iterations == 0 or llm.engine.pool.num_free == llm.engine.pool.num_blocks


def test_params_count_mismatch(llm):
    with pytest.raises(ValueError, match="sampling_params: 2 given for 3 prompts"):
        llm.generate([{"prompt_token_ids": [1]}] * 3, [SamplingParams()] * 2, use_tqdm=False)


def test_missing_folder(tmp_path):
    with pytest.raises(ValueError, match="no such folder or .gguf file"):
        LLM(str(tmp_path / "nope"), device="cpu")


def test_folder_without_config(tmp_path):
    with pytest.raises(ValueError, match="has no config.json"):
        LLM(str(tmp_path), device="cpu")


def test_unsupported_architecture_names_supported(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}))
    with pytest.raises(ValueError, match=r"unsupported architecture.*LlamaForCausalLM.*Qwen3ForCausalLM"):
        LLM(str(tmp_path), device="cpu")


def test_missing_weights(tmp_path, tiny_models):
    import shutil

    shutil.copy(f"{tiny_models['llama']}/config.json", tmp_path / "config.json")
    with pytest.raises(ValueError, match="no \\*.safetensors weights"):
        LLM(str(tmp_path), device="cpu", skip_tokenizer_init=True)


def test_invalid_engine_options(tiny_models):
    with pytest.raises(ValueError, match="block_size=12 must be a positive power of two"):
        LLM(tiny_models["llama"], device="cpu", skip_tokenizer_init=True, block_size=12)
    with pytest.raises(ValueError, match="max_model_len=4096 exceeds"):
        LLM(tiny_models["llama"], device="cpu", skip_tokenizer_init=True, max_model_len=4096)
    with pytest.raises(ValueError, match="dtype='int8' is not supported"):
        LLM(tiny_models["llama"], device="cpu", skip_tokenizer_init=True, dtype="int8")
    with pytest.raises(ValueError, match="the KV cache fits 2 blocks"):
        LLM(tiny_models["llama"], device="cpu", skip_tokenizer_init=True, num_kv_blocks=2, max_model_len=256)


@pytest.mark.parametrize("prompts", [None, 5, 3.5, b"bytes"])
def test_prompts_of_the_wrong_type(llm, prompts):
    with pytest.raises(TypeError, match=r"prompts: expected a string, a dict .* or a list of them, got"):
        llm.generate(prompts, use_tqdm=False)
    assert not llm.engine.has_unfinished()


def test_bare_token_ids_get_a_hint(llm):
    with pytest.raises(ValueError, match=r"request 0: prompt: expected str or dict, got int \(token ids go in"):
        llm.generate([1, 2, 3], use_tqdm=False)


def test_sampling_params_as_dicts_say_how_to_fix(llm):
    prompts = [{"prompt_token_ids": [1, 2]}] * 3
    with pytest.raises(ValueError, match=r"request 1: sampling_params: got a dict d; pass SamplingParams\(\*\*d\)"):
        llm.generate(prompts, [SamplingParams(), {"temperature": 0}, SamplingParams()], use_tqdm=False)
    with pytest.raises(ValueError, match=r"request 2: sampling_params: got a dict d; pass SamplingParams\(\*\*d\)"):
        llm.generate(prompts, {"temperature": 0}, use_tqdm=False)  # one dict for all, not its keys
    with pytest.raises(TypeError, match=r"sampling_params: expected SamplingParams or a list of them"):
        llm.generate(prompts, 0.5, use_tqdm=False)
    assert not llm.engine.has_unfinished()


def test_stop_strings_without_tokenizer(llm):
    with pytest.raises(ValueError, match=r"request 0: stop: stop strings need the tokenizer"):
        llm.generate({"prompt_token_ids": [1, 2]}, SamplingParams(stop="x"), use_tqdm=False)


@pytest.mark.parametrize("messages", [None, "hello", {"role": "user", "content": "hi"}, 3])
def test_chat_messages_of_the_wrong_type(llm, messages):
    with pytest.raises(TypeError, match=r"messages: expected a conversation \(a list of .* or a list of conversations"):
        llm.chat(messages, use_tqdm=False)


def test_chat_malformed_conversation_names_it(llm):
    good = [{"role": "user", "content": "hi"}]
    with pytest.raises(ValueError, match=r"request 1: messages: expected a list of message dicts, got str"):
        llm.chat([good, "hello"], use_tqdm=False)
    with pytest.raises(ValueError, match=r"request 0: messages: expected a list of message dicts, got a list with"):
        llm.chat([["hello"]], use_tqdm=False)
