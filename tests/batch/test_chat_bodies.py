"""Chat bodies as people write them: content parts, add_generation_prompt, continue_final_message,
chat_template_kwargs; in the batch job and in LLM.chat (SmolLM2's real tokenizer and chat template)."""

from __future__ import annotations

import json

import pytest

from batchllm.batch.collect import CollectOptions, collect_requests
from batchllm.batch.results_file import ResumeState, read_results

END_OF_TURN = "<|im_end|>"
ASSISTANT_HEADER = "<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def tokenizer(text_model):
    from batchllm.model.tokenizer import load_tokenizer

    return load_tokenizer(text_model)


@pytest.fixture(scope="module")
def llm(text_model):
    from batchllm import LLM

    return LLM(text_model, max_model_len=256)


def _chat(custom_id: str, messages: list, **body) -> dict:
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
            "body": {"messages": messages, "max_tokens": 3, "temperature": 0, **body}}


def _collect(tmp_path, tokenizer, lines: list[dict]) -> tuple[dict, dict]:
    """(custom_id -> prompt token ids, custom_id -> RequestError) of the lines, as the job reads them."""
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    errors = {}
    collected = collect_requests(str(path), tokenizer, len(tokenizer), 256, ResumeState(), None, CollectOptions(),
                                 lambda custom_id, error: errors.__setitem__(custom_id, error))
    store = collected.requests
    offsets = store.offsets
    prompts = {cid: store.tokens[offsets[i]: offsets[i + 1]].tolist() for i, cid in enumerate(store.custom_ids)}
    return prompts, errors


def _text(tokenizer, ids: list[int]) -> str:
    return tokenizer.decode(ids, skip_special_tokens=False)


def test_text_parts_are_joined_with_newlines_like_a_plain_string(tmp_path, tokenizer):
    parts = [{"type": "text", "text": "Name a colour."}, {"type": "text", "text": "One word only."}]
    prompts, errors = _collect(tmp_path, tokenizer, [
        _chat("string", [{"role": "system", "content": "Be brief."},
                         {"role": "user", "content": "Name a colour.\nOne word only."}]),
        _chat("parts", [{"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
                        {"role": "user", "content": parts}]),
    ])
    assert errors == {}
    assert prompts["parts"] == prompts["string"]
    assert "Name a colour.\nOne word only." in _text(tokenizer, prompts["parts"])


@pytest.mark.parametrize("part, shown", [
    ({"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}, "'image_url'"),
    ({"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}, "'input_audio'"),
    ("just a string", "a part must be an object"),
    ({"type": "text", "text": 5}, "content[1].text must be a string"),
])
def test_a_part_that_is_not_text_is_an_error_line_naming_message_and_type(tmp_path, tokenizer, part, shown):
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "What is this?"}, part]}]
    prompts, errors = _collect(tmp_path, tokenizer, [_chat("bad", messages), _chat("good", messages[:1])])
    assert list(prompts) == ["good"]
    error = errors["bad"]
    assert error.code == "invalid_request" and error.param == "messages"
    assert "messages[1].content[1]" in error.message and shown in error.message


def test_continue_final_message_continues_the_assistant_text(tmp_path, tokenizer):
    partial = "The capital of France is"
    messages = [{"role": "user", "content": "What is the capital of France?"},
                {"role": "assistant", "content": partial}]
    prompts, errors = _collect(tmp_path, tokenizer, [
        _chat("continue", messages, continue_final_message=True, add_generation_prompt=False),
        _chat("new-turn", messages),
        _chat("no-header", messages[:1], add_generation_prompt=False),
        _chat("header", messages[:1]),
    ])
    assert errors == {}
    text = _text(tokenizer, prompts["continue"])
    assert text.endswith(ASSISTANT_HEADER + partial)  # inside the assistant's turn, not closed
    assert END_OF_TURN not in text[text.rindex(ASSISTANT_HEADER):]
    assert prompts["continue"] == tokenizer(text, add_special_tokens=False).input_ids
    assert _text(tokenizer, prompts["new-turn"]).endswith(partial + END_OF_TURN + "\n" + ASSISTANT_HEADER)
    assert _text(tokenizer, prompts["header"]).endswith(ASSISTANT_HEADER)
    assert not _text(tokenizer, prompts["no-header"]).endswith(ASSISTANT_HEADER)


@pytest.mark.parametrize("body, field, code, says", [
    ({"continue_final_message": True}, "continue_final_message", "invalid_parameter", "add_generation_prompt to false"),
    ({"continue_final_message": True, "add_generation_prompt": True}, "continue_final_message", "invalid_parameter",
     "set add_generation_prompt to false"),
    ({"add_generation_prompt": "yes"}, "add_generation_prompt", "invalid_parameter", "must be true or false"),
    ({"chat_template_kwargs": ["enable_thinking"]}, "chat_template_kwargs", "invalid_parameter", "must be an object"),
    ({"chat_template_kwargs": {"tokenize": True}}, "chat_template_kwargs", "invalid_parameter", "['tokenize']"),
])
def test_bad_chat_options_are_error_lines_naming_the_field(tmp_path, tokenizer, body, field, code, says):
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    _, errors = _collect(tmp_path, tokenizer, [_chat("bad", messages, **body)])
    assert errors["bad"].code == code and errors["bad"].param == field and says in errors["bad"].message


def test_continue_final_message_needs_an_assistant_message_last(tmp_path, tokenizer):
    _, errors = _collect(tmp_path, tokenizer, [
        _chat("bad", [{"role": "user", "content": "Hi"}], continue_final_message=True, add_generation_prompt=False)])
    assert errors["bad"].code == "invalid_parameter" and "its role is 'user'" in errors["bad"].message


def test_chat_fields_on_a_completion_are_refused(tmp_path, tokenizer):
    line = {"custom_id": "c", "url": "/v1/completions", "body": {"prompt": "Hi", "add_generation_prompt": False}}
    _, errors = _collect(tmp_path, tokenizer, [line])
    assert errors["c"].code == "unsupported_parameter" and errors["c"].param == "add_generation_prompt"


def test_chat_template_kwargs_reach_the_template(tmp_path, text_model):
    from batchllm.model.tokenizer import load_tokenizer

    messages = [{"role": "user", "content": "Hi"}]
    tokenizer = load_tokenizer(text_model)
    # SmolLM2's template uses no such variable: it is ignored, not an error.
    prompts, errors = _collect(tmp_path, tokenizer, [
        _chat("plain", messages), _chat("ignored", messages, chat_template_kwargs={"enable_thinking": False})])
    assert errors == {} and prompts["ignored"] == prompts["plain"]

    tokenizer.chat_template = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                               "{% if shout %}LOUDLY {% endif %}{% if add_generation_prompt %}assistant:{% endif %}")
    prompts, errors = _collect(tmp_path, tokenizer, [
        _chat("quiet", messages), _chat("loud", messages, chat_template_kwargs={"shout": True})])
    assert errors == {}
    assert _text(tokenizer, prompts["quiet"]) == "user: Hi\nassistant:"
    assert _text(tokenizer, prompts["loud"]) == "user: Hi\nLOUDLY assistant:"


def test_the_job_and_llm_chat_build_the_same_prompts(tmp_path, llm):
    from batchllm import SamplingParams
    from batchllm.batch import run_batch_file

    conversations = [
        ([{"role": "user", "content": [{"type": "text", "text": "Say hi."}, {"type": "text", "text": "Now."}]}], {}),
        ([{"role": "user", "content": "Finish: one, two,"}, {"role": "assistant", "content": "three,"}],
         {"continue_final_message": True, "add_generation_prompt": False}),
        ([{"role": "user", "content": "Hello"}], {"chat_template_kwargs": {"enable_thinking": False}}),
    ]
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps(_chat(f"q{i}", m, **o)) + "\n" for i, (m, o) in enumerate(conversations)))
    out = str(tmp_path / "out.jsonl")
    summary = run_batch_file(llm, str(inp), out, progress=False, log=lambda message: None)
    assert summary.succeeded == 3 and summary.errors == 0
    results = {r["custom_id"]: r["response"]["body"] for r in read_results(out)}
    greedy = SamplingParams(temperature=0, max_tokens=3)
    for i, (messages, options) in enumerate(conversations):
        [direct] = llm.chat(messages, greedy, use_tqdm=False, **options)
        body = results[f"q{i}"]
        assert body["usage"]["prompt_tokens"] == len(direct.prompt_token_ids)
        assert body["choices"][0]["message"]["content"] == direct.outputs[0].text


def test_llm_chat_lists_every_bad_conversation(llm):
    image = {"type": "image_url", "image_url": {"url": "x"}}
    with pytest.raises(ValueError) as info:
        llm.chat([[{"role": "user", "content": "fine"}], [{"role": "user", "content": [image]}],
                  [{"role": "user", "content": "Hi"}]], continue_final_message=True, add_generation_prompt=False,
                 use_tqdm=False)
    message = str(info.value)
    assert "request 1: messages[0].content[0]: parts of type 'image_url' are not supported" in message
    assert "request 0: continue_final_message: the last message must be the assistant's" in message
    assert "request 2: continue_final_message" in message
    with pytest.raises(ValueError, match="set add_generation_prompt to false"):
        llm.chat([{"role": "assistant", "content": "x"}], continue_final_message=True, use_tqdm=False)
