"""`batchllm run-batch`: OpenAI batch format in and out, per-request errors, resume after a kill, dry run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from batchllm.entrypoints.cli import main
from batchllm.batch.openai_format import (
    RequestError,
    derived_seed,
    sampling_params_from_body,
)
from batchllm.batch.requests_jsonl import auto_custom_id, line_hash
from batchllm.batch.results_file import read_results

SYSTEM = "You are a careful assistant. Answer briefly and precisely, in one sentence, without any lists."
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _chat(custom_id, question, **body):
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": "tiny", "messages": [{"role": "system", "content": SYSTEM},
                                                   {"role": "user", "content": question}], **body}}


def _completion(custom_id, prompt, **body):
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/completions", "body": {"prompt": prompt, **body}}


def _write(path, lines):
    with open(path, "w") as f:
        for line in lines:
            f.write((line if isinstance(line, str) else json.dumps(line)) + "\n")
    return str(path)


def _by_id(results):
    out = {}
    for r in results:
        assert r["custom_id"] not in out, f"{r['custom_id']} appears twice"
        out[r["custom_id"]] = r
    return out


def _auto_id(line, occurrence=1):
    """The custom_id run-batch gives a line without one (requests_jsonl.auto_custom_id)."""
    return auto_custom_id(line_hash((line if isinstance(line, str) else json.dumps(line)).encode()), occurrence)


def _content(r):
    choice = r["response"]["body"]["choices"][0]
    return choice["message"]["content"] if "message" in choice else choice["text"]


def _run(*argv):
    return main(["run-batch", *argv, "--no-progress"])


# ---- mapping and writer units ----------------------------------------------------------------------------


def test_openai_body_mapping():
    p = sampling_params_from_body({"max_completion_tokens": 7, "stop": "x", "top_p": 0.5, "model": "m"}, "chat", 100)
    assert p.max_tokens == 7 and p.stop_strings == ("x",) and p.top_p == 0.5
    assert p.temperature == 1.0  # OpenAI's default, not greedy
    p = sampling_params_from_body({"logprobs": 0, "stop": ["a", "b"], "seed": 3, "temperature": 0}, "completion", 100)
    assert p.logprobs == 0 and p.stop_strings == ("a", "b") and p.seed == 3 and p.greedy  # k = 0 alternatives
    assert sampling_params_from_body({"frequency_penalty": 0, "stream": False}, "chat", 100).n == 1
    for body, code in [({"n": 129}, "invalid_parameter"), ({"temperature": -1}, "invalid_parameter"),
                       ({"frequency_penalty": 2.5}, "invalid_parameter"), ({"foo": 1}, "unsupported_parameter"),
                       ({"max_tokens": "5"}, "invalid_parameter"), ({"stop": [1]}, "invalid_parameter"),
                       ({"max_tokens": 3, "max_completion_tokens": 4}, "invalid_parameter"),
                       ({"logprobs": 21}, "invalid_parameter"), ({"stream": True}, "unsupported_parameter")]:
        with pytest.raises(RequestError) as info:
            sampling_params_from_body(body, "completion", 100)
        assert info.value.code == code, body
    assert derived_seed(0, "a") == derived_seed(0, "a") != derived_seed(1, "a")


# ---- the job --------------------------------------------------------------------------------------------


def test_mixed_batch_with_bad_lines(tmp_path, text_model):
    lines = [
        _chat("chat-greedy", "What is the capital of France?", max_tokens=6, temperature=0),
        _chat("chat-sampled", "Name a color.", max_completion_tokens=5, temperature=0.8, top_p=0.9),
        _chat("chat-seeded", "Name a fruit.", max_tokens=5, temperature=1.2, seed=7, stop=["\n"], logprobs=True),
        _completion("cmpl-text", "Once upon a time", max_tokens=4, temperature=0, logprobs=1),
        _completion("cmpl-ids", [5, 6, 7, 8, 9], max_tokens=3, temperature=0, stop=["zz", "yy"]),
        {"custom_id": "plain-prompt", "prompt": "Hello there", "max_tokens": 3, "temperature": 0},
        {"prompt_token_ids": [11, 12, 13], "max_tokens": 2, "temperature": 0},  # no custom_id: named by content
        '{"custom_id": "broken", "body": {"prompt": "x"',  # malformed JSON: no custom_id can be read
        _completion("too-long", "word " * 400, max_tokens=3),
        {"custom_id": "bad-url", "method": "POST", "url": "/v1/embeddings", "body": {"input": "x", "prompt": "x"}},
        _completion("n-too-many", "hi", n=129, max_tokens=2),  # n is 1..128
        _completion("unknown-field", "hi", max_tokens=2, best_of=3),
        _completion("cmpl-text", "a duplicate id", max_tokens=2),
        _chat("bad-content", 5, max_tokens=2),
    ]
    inp = _write(tmp_path / "in.jsonl", lines)
    unnamed, broken = (_auto_id(lines[i]) for i in (6, 7))
    out = str(tmp_path / "out.jsonl")
    summary = str(tmp_path / "summary.json")
    rc = _run("-i", inp, "-o", out, "--model", text_model, "--max-model-len", "128", "--summary-json", summary)
    assert rc == 0
    results = read_results(out)
    assert len(results) == len(lines)
    ids = [r["custom_id"] for r in results]
    assert sorted(set(ids)) == sorted({"chat-greedy", "chat-sampled", "chat-seeded", "cmpl-text", "cmpl-ids",
                                       "plain-prompt", unnamed, broken, "too-long", "bad-url", "n-too-many",
                                       "unknown-field", "bad-content"})
    errors = {}
    for r in results:
        if r["error"] is not None:
            assert r["response"]["status_code"] >= 400
            err = r["response"]["body"]["error"]
            assert err["code"] == r["error"]["code"] and err["message"] == r["error"]["message"]
            errors.setdefault(r["custom_id"], []).append(r["error"]["code"])
    assert errors == {broken: ["invalid_request"], "too-long": ["context_length_exceeded"],
                      "bad-url": ["unsupported_url"], "n-too-many": ["invalid_parameter"],
                      "unknown-field": ["unsupported_parameter"], "cmpl-text": ["duplicate_custom_id"],
                      "bad-content": ["invalid_parameter"]}
    ok = {r["custom_id"]: r for r in results if r["error"] is None}
    assert len(ok) == 7
    for cid, r in ok.items():
        assert r["id"].startswith("batch_req_") and r["response"]["status_code"] == 200
        body = r["response"]["body"]
        usage = body["usage"]
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > 0
        choice = body["choices"][0]
        assert choice["finish_reason"] in ("stop", "length") and choice["index"] == 0
        if cid.startswith("chat"):
            assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
            assert choice["message"]["role"] == "assistant" and body["model"] == "tiny"
        else:
            assert body["object"] == "text_completion" and body["id"].startswith("cmpl-")
    assert ok["chat-greedy"]["response"]["body"]["usage"]["completion_tokens"] <= 6
    assert ok["cmpl-ids"]["response"]["body"]["usage"]["prompt_tokens"] == 5
    assert len(ok["chat-seeded"]["response"]["body"]["choices"][0]["logprobs"]["content"]) == \
        ok["chat-seeded"]["response"]["body"]["usage"]["completion_tokens"]
    lp = ok["cmpl-text"]["response"]["body"]["choices"][0]["logprobs"]
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["text_offset"]) > 0
    s = json.load(open(summary))
    assert s["succeeded"] == 7 and s["errors"] == 7 and s["reuse_ratio"] > 0  # the chats share the system prompt

    # Rerun: nothing left to do, nothing appended; sampled requests got a reproducible derived seed.
    assert _run("-i", inp, "-o", out, "--model", text_model, "--max-model-len", "128") == 0
    assert len(read_results(out)) == len(lines)
    out2 = str(tmp_path / "out2.jsonl")
    assert _run("-i", inp, "-o", out2, "--model", text_model, "--max-model-len", "128") == 0
    again = {r["custom_id"]: r for r in read_results(out2) if r["error"] is None}
    assert {k: _content(v) for k, v in again.items()} == {k: _content(v) for k, v in ok.items()}


def test_chat_matches_llm_chat_and_resume_after_torn_line(tmp_path, text_model):
    from batchllm import LLM, SamplingParams
    from batchllm.batch import run_batch_file

    questions = [f"Question number {i}: what comes next?" for i in range(6)]
    inp = _write(tmp_path / "in.jsonl", [_chat(f"q{i}", q, max_tokens=8, temperature=0) for i, q in enumerate(questions)])
    llm = LLM(text_model, max_model_len=256)
    expected = llm.chat([[{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}] for q in questions],
                        SamplingParams(temperature=0, max_tokens=8), use_tqdm=False)
    out = str(tmp_path / "out.jsonl")
    summary = run_batch_file(llm, inp, out, progress=False)
    assert summary.succeeded == 6 and summary.errors == 0 and summary.reuse_ratio > 0
    got = _by_id(read_results(out))
    assert [_content(got[f"q{i}"]) for i in range(6)] == [e.outputs[0].text for e in expected]

    # Keep three lines and half of the fourth, as a kill mid-write would: the rerun completes the rest.
    raw = open(out, "rb").read().splitlines(keepends=True)
    with open(out, "wb") as f:
        f.write(b"".join(raw[:3]) + raw[3][: len(raw[3]) // 2])
    summary = run_batch_file(llm, inp, out, progress=False)
    assert summary.already_done == 3 and summary.succeeded == 3
    resumed = _by_id(read_results(out))
    assert {k: _content(v) for k, v in resumed.items()} == {k: _content(v) for k, v in got.items()}

    # The engine given a few requests at a time (whole prefix groups together): same answers.
    passes = str(tmp_path / "passes.jsonl")
    summary = run_batch_file(llm, inp, passes, progress=False, max_requests_per_pass=4)
    assert summary.succeeded == 6
    assert {k: _content(v) for k, v in _by_id(read_results(passes)).items()} == \
        {k: _content(v) for k, v in got.items()}


def test_dry_run_prints_analysis_and_plan_without_writing(tmp_path, text_model, capsys):
    lines = [_chat(f"q{i}", f"question {i}", max_tokens=4) for i in range(5)] + ["not json"]
    inp = _write(tmp_path / "in.jsonl", lines)
    out = tmp_path / "out.jsonl"
    assert _run("-i", inp, "-o", str(out), "--model", text_model, "--dry-run") == 0
    text = capsys.readouterr().out
    assert "token reuse ratio" in text and "memory plan" in text and "KV pool" in text
    assert "5 would run" in text and "1 would get error lines" in text
    assert not out.exists()


def test_job_level_failures_exit_nonzero(tmp_path, text_model):
    assert _run("-i", str(tmp_path / "missing.jsonl"), "-o", str(tmp_path / "o.jsonl"), "--model", text_model) == 2
    inp = _write(tmp_path / "in.jsonl", [_completion("a", "hi", max_tokens=2)])
    assert _run("-i", inp, "-o", str(tmp_path / "o.jsonl"), "--model", str(tmp_path / "no-model")) == 2


# ---- kill -9 mid-run, then resume -------------------------------------------------------------------------


def _cli(*argv):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return [sys.executable, "-m", "batchllm.entrypoints.cli", "run-batch", *argv, "--no-progress"], env


def _kill_at(proc, out: str, moment: tuple[str, float]) -> None:
    """SIGKILL ``proc`` at ``moment``: ("seconds", t) after its start, or ("lines", n) once n more lines exist."""
    kind, value = moment
    start_lines = len(read_results(out)) if os.path.exists(out) else 0
    deadline = time.monotonic() + (value if kind == "seconds" else 120)
    while time.monotonic() < deadline and proc.poll() is None:
        if kind == "lines" and os.path.exists(out) and len(read_results(out)) >= start_lines + value:
            break
        time.sleep(0.02)
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait()


def test_kill_9_at_random_moments_then_resume_loses_and_duplicates_nothing(tmp_path, text_model):
    """Killed again and again at random moments (loading, reading, generating, mid-write), the job resumed
    by the same command ends with every custom_id exactly once, each equal to an uninterrupted run's."""
    import random

    lines = []
    for i in range(30):
        body = dict(max_tokens=10 + 4 * i, temperature=0 if i % 2 else 0.8, ignore_eos=True)
        if i % 3 == 0:
            lines.append(_completion(f"r{i:02d}", [100 + i, 200, 300, 400 + i], **body))
        else:
            lines.append(_chat(f"r{i:02d}", f"Tell me about topic {i}.", **body))
    inp = _write(tmp_path / "in.jsonl", lines)
    common = ["--model", text_model, "--max-model-len", "512", "--max-num-seqs", "6"]
    out = str(tmp_path / "killed.jsonl")
    rng = random.Random(1201)
    # First kills once a random number of lines more are written (mid-generation, maybe mid-write), then
    # at random times after the start (importing, loading the model, reading, or generating).
    moments = [("lines", rng.randint(1, 4)) for _ in range(3)] + [("seconds", rng.uniform(0.3, 5.0)) for _ in range(3)]
    counts = []
    for moment in moments:
        cmd, env = _cli("-i", inp, "-o", out, *common)
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _kill_at(proc, out, moment)
        counts.append(len(read_results(out)) if os.path.exists(out) else 0)
    print("lines after each kill:", list(zip(moments, counts)))
    assert all(0 < n < 30 for n in counts[:3]) and counts[0] < counts[1] < counts[2], counts  # killed mid-run

    # Resume with the same command in-process, and an uninterrupted run to compare with.
    assert main(["run-batch", "-i", inp, "-o", out, *common, "--no-progress"]) == 0
    full = str(tmp_path / "full.jsonl")
    assert main(["run-batch", "-i", inp, "-o", full, *common, "--no-progress"]) == 0
    resumed, reference = _by_id(read_results(out)), _by_id(read_results(full))
    assert sorted(resumed) == sorted(reference) == [f"r{i:02d}" for i in range(30)]
    for cid, r in reference.items():
        assert r["error"] is None and resumed[cid]["error"] is None
        assert _content(resumed[cid]) == _content(r), cid
        assert resumed[cid]["response"]["body"]["usage"] == r["response"]["body"]["usage"]


def test_feature_switches_and_trace(tmp_path, text_model):
    """Single scheduling features switched from the CLI give the same greedy answers; --trace writes a trace."""
    questions = [f"Item {i}: name a colour." for i in range(5)]
    inp = _write(tmp_path / "in.jsonl", [_chat(f"q{i}", q, max_tokens=6, temperature=0) for i, q in enumerate(questions)])
    common = ["--model", text_model, "--max-model-len", "256"]
    base = str(tmp_path / "base.jsonl")
    assert _run("-i", inp, "-o", base, *common) == 0
    switched, trace = str(tmp_path / "switched.jsonl"), str(tmp_path / "trace.json")
    assert _run("-i", inp, "-o", switched, *common, "--no-prefix-clustering", "--no-decode-first",
                "--token-batching", "count", "--prefix-caching", "--trace", trace) == 0
    assert {k: _content(v) for k, v in _by_id(read_results(switched)).items()} == \
        {k: _content(v) for k, v in _by_id(read_results(base)).items()}
    data = json.loads(open(trace).read())
    assert len(data["batch_tokens"]) > 0 and sum(data["decode_tokens"]) >= 5


def test_scheduler_flags_parse_to_overrides():
    from batchllm.entrypoints.cli import build_parser
    from batchllm.entrypoints.run_batch import scheduler_overrides

    args = build_parser().parse_args(["run-batch", "-i", "x", "-o", "y", "--no-prefix-clustering",
                                      "--token-batching", "count", "--multi-level"])
    assert scheduler_overrides(args) == {"prefix_clustering": False, "token_batching": "count", "multi_level": True}
    assert scheduler_overrides(build_parser().parse_args(["run-batch", "-i", "x", "-o", "y"])) == {}
