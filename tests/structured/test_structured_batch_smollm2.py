"""Structured outputs through run-batch on the packaged SmolLM2 model: 200 requests with three JSON schemas
(nested objects, enums, arrays, required fields) and json_object; every output parses and validates against
its schema, finish_reason is "stop", and each invalid schema is one error line."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("xgrammar")
jsonschema = pytest.importorskip("jsonschema")

from batchllm.batch.results_file import read_results  # noqa: E402
from batchllm.entrypoints.cli import main  # noqa: E402

PERSON = {"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 12},
    "age": {"type": "integer", "minimum": 0, "maximum": 120},
    "address": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12},
                                                 "country": {"enum": ["France", "Japan", "Peru"]}},
                "required": ["city", "country"], "additionalProperties": False}},
    "required": ["name", "age", "address"], "additionalProperties": False}
REVIEW = {"type": "object", "properties": {
    "sentiment": {"enum": ["positive", "negative", "neutral"]},
    "score": {"type": "integer", "minimum": 1, "maximum": 5}},
    "required": ["sentiment", "score"], "additionalProperties": False}
TAGS = {"type": "object", "properties": {
    "tags": {"type": "array", "items": {"enum": ["red", "green", "blue", "small", "large"]}, "minItems": 1,
             "maxItems": 3},
    "valid": {"type": "boolean"}},
    "required": ["tags", "valid"], "additionalProperties": False}
SCHEMAS = [PERSON, REVIEW, TAGS]
# The json_object question asks for a small object: any object is valid there, and an open question lets
# this 135M model write one long string until max_tokens ("Give me some data." did).
QUESTIONS = ["Describe a person who lives abroad.", "Review a cheap umbrella.", "Tag a photo of an apple.",
             'Return a JSON object with the keys "id" (the number {i}) and "ok" (true).']


def _line(i: int) -> dict:
    kind = i % 4
    body = {"messages": [{"role": "user", "content": f"{QUESTIONS[kind].format(i=i)} (item {i}) Answer in JSON."}],
            "max_tokens": 128, "temperature": 0}
    if kind < 3:
        body["response_format"] = {"type": "json_schema", "json_schema": {"name": f"s{kind}", "schema": SCHEMAS[kind]}}
    else:
        body["response_format"] = {"type": "json_object"}
    return {"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions", "body": body}


def test_two_hundred_constrained_requests_all_validate(gguf_path, tmp_path):
    lines = [_line(i) for i in range(200)]
    bad = [
        {"type": "json_schema", "json_schema": {"name": "bad1", "schema": {"type": "no-such-type"}}},
        {"type": "json_schema", "json_schema": {"name": "bad2", "schema": {"type": "string", "pattern": "(["}}},
        {"type": "json_schema", "json_schema": {"name": "bad3"}},
    ]
    for k, fmt in enumerate(bad):
        lines.append({"custom_id": f"bad{k}", "method": "POST", "url": "/v1/chat/completions",
                      "body": {"messages": [{"role": "user", "content": "hi"}], "response_format": fmt}})
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    inp.write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert main(["run-batch", "-i", str(inp), "-o", str(out), "--model", gguf_path, "--max-model-len", "512",
                 "--no-progress"]) == 0
    results = {r["custom_id"]: r for r in read_results(str(out))}
    assert len(results) == len(lines)
    for k in range(len(bad)):
        error = results[f"bad{k}"]["error"]
        assert error is not None and error["code"] in ("invalid_request", "invalid_parameter"), error
    for i in range(200):
        r = results[f"r{i}"]
        assert r["error"] is None, r["error"]
        choice = r["response"]["body"]["choices"][0]
        assert choice["finish_reason"] == "stop", (i, choice)
        value = json.loads(choice["message"]["content"])
        if i % 4 < 3:
            jsonschema.validate(value, SCHEMAS[i % 4])
        else:
            assert isinstance(value, dict)
