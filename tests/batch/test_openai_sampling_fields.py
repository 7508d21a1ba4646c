"""OpenAI body fields of penalties, biases, min_p, allowed tokens and logprobs; their response shapes."""

from __future__ import annotations

import json
import math

import pytest

from batchllm.batch.openai_format import RequestError, sampling_params_from_body, success_line
from batchllm.outputs import CompletionOutput, RequestOutput

VOCAB = 100


def _params(body: dict, kind: str = "chat"):
    return sampling_params_from_body(body, kind, VOCAB)


def _error(body: dict, kind: str = "chat") -> RequestError:
    with pytest.raises(RequestError) as info:
        _params(body, kind)
    return info.value


def test_penalties_biases_min_p_and_allowed_tokens_map_to_sampling_params():
    body = {"presence_penalty": 0.5, "frequency_penalty": -1, "repetition_penalty": 1.2, "min_p": 0.05,
            "logit_bias": {"12": -100, "3": 5.5}, "allowed_token_ids": [1, 3, 12]}
    for kind in ("chat", "completion"):
        p = _params(body, kind)
        assert (p.presence_penalty, p.frequency_penalty, p.repetition_penalty, p.min_p) == (0.5, -1, 1.2, 0.05)
        assert p.logit_bias == {12: -100.0, 3: 5.5} and all(type(k) is int for k in p.logit_bias)
        assert p.allowed_token_ids == [1, 3, 12]
    p = _params({"presence_penalty": None, "logit_bias": None, "min_p": None})
    assert (p.presence_penalty, p.logit_bias, p.min_p, p.repetition_penalty) == (0.0, None, 0.0, 1.0)
    assert _params({"logit_bias": {}}).logit_bias == {}


@pytest.mark.parametrize("body, code, param", [
    ({"presence_penalty": 2.5}, "invalid_parameter", "presence_penalty"),
    ({"frequency_penalty": "1"}, "invalid_parameter", "frequency_penalty"),
    ({"frequency_penalty": -2.01}, "invalid_parameter", "frequency_penalty"),
    ({"repetition_penalty": 0}, "invalid_parameter", "repetition_penalty"),
    ({"min_p": 1.5}, "invalid_parameter", "min_p"),
    ({"logit_bias": [1, 2]}, "invalid_parameter", "logit_bias"),
    ({"logit_bias": {"abc": 1}}, "invalid_parameter", "logit_bias"),
    ({"logit_bias": {"-3": 1}}, "invalid_parameter", "logit_bias"),
    ({"logit_bias": {"100": 1}}, "invalid_parameter", "logit_bias"),  # outside the vocabulary
    ({"logit_bias": {"5": 101}}, "invalid_parameter", "logit_bias"),
    ({"logit_bias": {"5": "1"}}, "invalid_parameter", "logit_bias"),
    ({"allowed_token_ids": "1,2"}, "invalid_parameter", "allowed_token_ids"),
    ({"allowed_token_ids": []}, "invalid_parameter", "allowed_token_ids"),
    ({"allowed_token_ids": [1, 100]}, "invalid_parameter", "allowed_token_ids"),
])
def test_bad_values_name_the_field(body, code, param):
    error = _error(body)
    assert (error.code, error.param) == (code, param), error.message
    assert error.message.startswith(param)


def test_chat_logprobs_and_top_logprobs():
    assert _params({}).logprobs is None and _params({"logprobs": False}).logprobs is None
    assert _params({"logprobs": True}).logprobs == 0
    assert _params({"logprobs": True, "top_logprobs": 5}).logprobs == 5
    assert _params({"logprobs": True, "top_logprobs": 20}).logprobs == 20
    assert _params({"top_logprobs": 0}).logprobs is None
    for body, param in [({"top_logprobs": 3}, "top_logprobs"), ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
                        ({"logprobs": True, "top_logprobs": True}, "top_logprobs"), ({"logprobs": 1}, "logprobs")]:
        error = _error(body)
        assert (error.code, error.param) == ("invalid_parameter", param), body


def test_completion_logprobs_is_the_number_of_alternatives():
    assert _params({"logprobs": 0}, "completion").logprobs == 0
    assert _params({"logprobs": 5}, "completion").logprobs == 5
    assert _error({"logprobs": 21}, "completion").code == "invalid_parameter"
    assert _error({"logprobs": True}, "completion").code == "invalid_parameter"
    assert _error({"logprobs": 2, "top_logprobs": 2}, "completion").code == "unsupported_parameter"


def _output(top: bool) -> RequestOutput:
    completion = CompletionOutput(
        index=0, text="ab", token_ids=[7, 8], cumulative_logprob=-1.5, logprobs=[-0.5, -1.0],
        finish_reason="length",
        top_logprobs=[{7: -0.5, 9: -2.0}, {3: -0.25, 8: -1.0}] if top else None,
    )
    return RequestOutput("r", None, [1, 2], [completion], True)


TEXT = {7: "a", 8: "b", 9: "c", 3: "d"}


def test_chat_response_shape():
    body = success_line("c", "chat", "m", _output(True), [["a", "b"]], token_text=TEXT.__getitem__)
    content = body["response"]["body"]["choices"][0]["logprobs"]["content"]
    assert content == [
        {"token": "a", "logprob": -0.5, "bytes": [97], "top_logprobs": [
            {"token": "a", "logprob": -0.5, "bytes": [97]}, {"token": "c", "logprob": -2.0, "bytes": [99]}]},
        {"token": "b", "logprob": -1.0, "bytes": [98], "top_logprobs": [
            {"token": "d", "logprob": -0.25, "bytes": [100]}, {"token": "b", "logprob": -1.0, "bytes": [98]}]},
    ]
    # logprobs=0: the chosen tokens only
    content = success_line("c", "chat", "m", _output(False), [["a", "b"]])["response"]["body"]["choices"][0]
    assert [c["top_logprobs"] for c in content["logprobs"]["content"]] == [[], []]


def test_completion_response_shape():
    lp = success_line("c", "completion", "m", _output(True), [["a", "b"]], token_text=TEXT.__getitem__)
    lp = lp["response"]["body"]["choices"][0]["logprobs"]
    assert lp == {"tokens": ["a", "b"], "token_logprobs": [-0.5, -1.0],
                  "top_logprobs": [{"a": -0.5, "c": -2.0}, {"d": -0.25, "b": -1.0}], "text_offset": [0, 1]}
    # without a tokenizer the ids stand for the texts
    lp = success_line("c", "completion", "m", _output(True))["response"]["body"]["choices"][0]["logprobs"]
    assert lp["tokens"] == ["7", "8"] and lp["top_logprobs"][0] == {"7": -0.5, "9": -2.0}
    assert success_line("c", "completion", "m", _output(False))["response"]["body"]["choices"][0]["logprobs"][
        "top_logprobs"] is None


def test_masked_alternatives_are_valid_json():
    output = _output(True)
    output.outputs[0].top_logprobs = [{7: -0.5, 9: -math.inf}, {8: -1.0, 3: -math.inf}]
    for kind in ("chat", "completion"):
        line = success_line("c", kind, "m", output)
        text = json.dumps(line, allow_nan=False)  # raises on -inf
        assert "-9999.0" in text


def test_a_batch_file_with_penalties_and_top_logprobs(tmp_path, text_model):
    from batchllm import LLM, SamplingParams
    from batchllm.batch import run_batch_file

    llm = LLM(text_model, device="cpu")
    lines = [
        {"custom_id": "chat", "url": "/v1/chat/completions", "method": "POST",
         "body": {"messages": [{"role": "user", "content": "Hello there"}], "max_tokens": 6, "temperature": 0,
                  "logprobs": True, "top_logprobs": 3, "presence_penalty": 1.0, "repetition_penalty": 1.3,
                  "logit_bias": {"42": 2.0}}},
        {"custom_id": "cmpl", "url": "/v1/completions", "method": "POST",
         "body": {"prompt": "Once upon a time", "max_tokens": 6, "temperature": 0, "logprobs": 2,
                  "frequency_penalty": 0.7, "min_p": 0.1}},
    ]
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text("".join(json.dumps(line) + "\n" for line in lines))
    summary = run_batch_file(llm, str(src), str(out), progress=False)
    assert summary.succeeded == 2 and summary.errors == 0
    results = {r["custom_id"]: r["response"]["body"] for r in map(json.loads, out.read_text().splitlines())}
    content = results["chat"]["choices"][0]["logprobs"]["content"]
    assert len(content) == results["chat"]["usage"]["completion_tokens"]
    for item in content:
        tops = [t["logprob"] for t in item["top_logprobs"]]
        assert len(tops) == 3 and tops == sorted(tops, reverse=True)
        assert item["logprob"] == pytest.approx(tops[0])  # greedy: the chosen token is the likeliest
    lp = results["cmpl"]["choices"][0]["logprobs"]
    assert len(lp["top_logprobs"]) == len(lp["tokens"]) and all(len(t) <= 2 for t in lp["top_logprobs"])
    # the same request through LLM.generate gives the same tokens and logprobs
    tokenizer = llm.get_tokenizer()
    direct = llm.generate("Once upon a time", SamplingParams(temperature=0, max_tokens=6, logprobs=2,
                                                              frequency_penalty=0.7, min_p=0.1), use_tqdm=False)
    completion = direct[0].outputs[0]
    assert lp["tokens"] == [tokenizer.decode([t]) for t in completion.token_ids]
    assert lp["token_logprobs"] == pytest.approx(completion.logprobs)
    assert [v for d in lp["top_logprobs"] for v in d.values()] == pytest.approx(
        [v for d in completion.top_logprobs for v in d.values()])
