"""The promises of `batchllm run-batch`, each test named after one: no request stops the batch, no second
job touches a running job's results, names do not move, and a job that cannot run says why and leaves no mess."""

from __future__ import annotations

import errno
import json
import os


from batchllm.batch.requests_jsonl import auto_custom_id, line_hash
from batchllm.batch.results_file import ResultsFile, manifest_path, read_results
from batchllm.entrypoints.cli import main

SEED_TOO_BIG, SEED_TOO_SMALL = 2**64, -(2**63) - 1


def _completion(custom_id, prompt, **body):
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/completions", "body": {"prompt": prompt, **body}}


def _chat(custom_id, content, **body):
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
            "body": {"messages": [{"role": "user", "content": content}], **body}}


def _write(path, lines, prefix=b""):
    data = prefix + b"".join((line if isinstance(line, bytes) else json.dumps(line).encode()) + b"\n" for line in lines)
    path.write_bytes(data)
    return str(path)


def _run(*argv):
    return main(["run-batch", *argv, "--no-progress"])


def _codes(results):
    out = {}
    for r in results:
        out.setdefault(r["custom_id"], []).append(None if r["error"] is None else r["error"]["code"])
    return out


def _texts(results):
    return {r["custom_id"]: r["response"]["body"]["choices"][0]["text"] for r in results if r["error"] is None}


def test_no_single_line_stops_the_batch(tmp_path, text_model):
    greedy = dict(max_tokens=4, temperature=0)
    lines = [
        _completion("seed-too-big", "hi", max_tokens=2, temperature=0.7, seed=SEED_TOO_BIG),
        _completion("seed-too-small", "hi", max_tokens=2, temperature=0.7, seed=SEED_TOO_SMALL),
        _completion("seed-max", "hi", max_tokens=2, temperature=0.7, seed=2**63 - 1),
        _completion("\ud800-id", "hi", **greedy),
        _completion("surrogate-prompt", "hi \ud800", **greedy),
        _chat("surrogate-content", "hi \udfff", **greedy),
        b"[" * 100_000 + b"]" * 100_000,
        b'{"custom_id": "huge-int", "prompt": "hi", "max_tokens": ' + b"7" * 5000 + b"}",
        _completion("nan-temperature", "hi", max_tokens=2, temperature=float("nan")),
        _completion("inf-temperature", "hi", max_tokens=2, temperature=float("inf")),
        _completion("tiny-temperature", "Once upon a time", max_tokens=4, temperature=1e-300),
        _completion("greedy", "Once upon a time", **greedy),
        {"custom_id": "embeddings", "method": "POST", "url": "/v1/embeddings", "body": {"input": "x"}},
        _completion("huge-top-k", "hi", max_tokens=2, top_k=10**30),
        _completion(auto_custom_id(5, 1), "hi", **greedy),
    ]
    inp = _write(tmp_path / "in.jsonl", lines, prefix=b"\xef\xbb\xbf")  # a BOM on line 1, as some editors write
    out = str(tmp_path / "out.jsonl")
    assert _run("-i", inp, "-o", out, "--model", text_model, "--max-model-len", "128") == 0
    results = read_results(out)
    assert len(results) == len(lines)
    codes = _codes(results)
    deep, huge = (auto_custom_id(line_hash(lines[i]), 1) for i in (6, 7))
    assert codes == {
        "seed-too-big": ["invalid_parameter"], "seed-too-small": ["invalid_parameter"], "seed-max": [None],
        "\ud800-id": ["invalid_request"], "surrogate-prompt": ["invalid_request"],
        "surrogate-content": ["invalid_request"], deep: ["invalid_request"], huge: ["invalid_request"],
        "nan-temperature": ["invalid_parameter"], "inf-temperature": ["invalid_parameter"],
        "tiny-temperature": [None], "greedy": [None], "embeddings": ["unsupported_url"],
        "huge-top-k": ["invalid_parameter"], auto_custom_id(5, 1): ["invalid_request"],
    }
    by_id = {r["custom_id"]: r for r in results}
    assert "seed" in by_id["seed-too-big"]["error"]["message"] and by_id["seed-too-big"]["error"]["message"].count("\n") == 0
    assert "surrogate" in by_id["\ud800-id"]["error"]["message"]
    assert "nested too deeply" in by_id[deep]["error"]["message"]
    assert "4300 digits" in by_id[huge]["error"]["message"]  # unparsable: named by its content
    texts = _texts(results)
    assert texts["tiny-temperature"] == texts["greedy"]  # a temperature below 1e-5 is greedy, as in vLLM
    # Every rerun finds the job done: the bad lines do not stop it either.
    assert _run("-i", inp, "-o", out, "--model", text_model, "--max-model-len", "128") == 0
    assert len(read_results(out)) == len(lines)


def test_a_failure_inside_one_request_becomes_its_error_line(tmp_path, text_model, monkeypatch):
    from batchllm import LLM
    from batchllm.batch import job, run_batch_file

    inp = _write(tmp_path / "in.jsonl", [_completion(f"r{i}", f"Story {i}:", max_tokens=3, temperature=0)
                                         for i in range(5)])
    llm = LLM(text_model, max_model_len=128)
    reference = str(tmp_path / "reference.jsonl")
    run_batch_file(llm, inp, reference, progress=False)
    real = job.success_line

    def flaky(custom_id, *args, **kwargs):
        if custom_id == "r3":
            raise KeyError("a bug while formatting r3")
        return real(custom_id, *args, **kwargs)

    monkeypatch.setattr(job, "success_line", flaky)
    out = str(tmp_path / "out.jsonl")
    summary = run_batch_file(llm, inp, out, progress=False)
    assert summary.succeeded == 4 and summary.error_codes == {"internal_error": 1}
    results = {r["custom_id"]: r for r in read_results(out)}
    assert results["r3"]["error"]["code"] == "internal_error" and "a bug while formatting r3" in \
        results["r3"]["error"]["message"] and results["r3"]["response"]["status_code"] == 500
    assert {k: v for k, v in _texts(read_results(out)).items()} == \
        {k: v for k, v in _texts(read_results(reference)).items() if k != "r3"}


def test_a_second_job_cannot_touch_a_running_jobs_output(tmp_path, text_model):
    inp = _write(tmp_path / "in.jsonl", [_completion("a", "hi", max_tokens=2, temperature=0)])
    out = str(tmp_path / "out.jsonl")
    with ResultsFile.open(out) as running:  # a job that is writing its output
        running.write({"custom_id": "x", "response": {"status_code": 200}, "error": None})
        running.write_line(b'{"custom_id": "y", "response": {"stat')  # the line it is writing right now
        before = open(out, "rb").read()
        for extra in ([], ["--overwrite"], ["--changed-lines", "rerun"]):
            assert _run("-i", inp, "-o", out, "--model", text_model, *extra) == 2
            assert open(out, "rb").read() == before, extra
        assert not os.path.exists(manifest_path(out))


def test_an_output_that_is_not_this_jobs_results_is_refused_untouched(tmp_path, text_model):
    lines = [_completion(f"q{i}", "hi", max_tokens=2, temperature=0) for i in range(3)]
    inp = _write(tmp_path / "in.jsonl", lines)
    assert _run("-i", inp, "-o", inp, "--model", text_model) == 2  # -o equal to -i
    requests_file = _write(tmp_path / "requests.jsonl", lines)  # request lines, not result lines
    assert _run("-i", inp, "-o", requests_file, "--model", text_model) == 2
    # Result lines without the manifest that says what they were computed from.
    other = str(tmp_path / "other.jsonl")
    assert _run("-i", inp, "-o", other, "--model", text_model) == 0
    os.rename(manifest_path(other), str(tmp_path / "kept-aside.json"))
    before = open(other, "rb").read()
    assert _run("-i", inp, "-o", other, "--model", text_model) == 2
    assert open(other, "rb").read() == before
    # Another job's results (none of its custom_ids are in this input).
    os.rename(str(tmp_path / "kept-aside.json"), manifest_path(other))
    second = _write(tmp_path / "second.jsonl", [_completion("z", "hi", max_tokens=2, temperature=0)])
    assert _run("-i", second, "-o", other, "--model", text_model) == 2
    assert open(other, "rb").read() == before
    assert open(requests_file, "rb").read() == open(inp, "rb").read()
    # --overwrite starts such an output over.
    assert _run("-i", second, "-o", other, "--model", text_model, "--overwrite") == 0
    assert [r["custom_id"] for r in read_results(other)] == ["z"]


def test_edited_input_lines_are_reported_and_refused_or_rerun(tmp_path, text_model, capsys):
    lines = [_completion(f"q{i}", f"Count to {i}:", max_tokens=3, temperature=0) for i in range(4)]
    inp = _write(tmp_path / "in.jsonl", lines)
    out = str(tmp_path / "out.jsonl")
    common = ["--model", text_model, "--max-model-len", "128"]
    assert _run("-i", inp, "-o", out, *common) == 0
    first = _texts(read_results(out))
    lines[1] = _completion("q1", "Something else entirely:", max_tokens=3, temperature=0)
    _write(tmp_path / "in.jsonl", lines)
    before = open(out, "rb").read()
    capsys.readouterr()
    assert _run("-i", inp, "-o", out, *common) == 2
    assert "'q1'" in capsys.readouterr().err and open(out, "rb").read() == before
    assert _run("-i", inp, "-o", out, *common, "--changed-lines", "rerun") == 0
    results = read_results(out)
    assert sorted(r["custom_id"] for r in results) == ["q0", "q1", "q2", "q3"]
    fresh = str(tmp_path / "fresh.jsonl")
    assert _run("-i", inp, "-o", fresh, *common) == 0
    assert _texts(results) == _texts(read_results(fresh)) and _texts(results)["q0"] == first["q0"]
    assert _run("-i", inp, "-o", out, *common) == 0 and len(read_results(out)) == 4  # now in step


def test_names_of_lines_without_custom_id_do_not_move(tmp_path, text_model):
    lines = [{"prompt": f"Line {i} says:", "max_tokens": 3, "temperature": 0} for i in range(5)]
    lines.append(dict(lines[0]))  # an identical copy: a second occurrence, its own name
    lines.append({"custom_id": "line-3", "prompt": "A real id that looks positional:", "max_tokens": 3,
                  "temperature": 0})
    inp = _write(tmp_path / "in.jsonl", lines)
    out = str(tmp_path / "out.jsonl")
    common = ["--model", text_model, "--max-model-len", "128"]
    assert _run("-i", inp, "-o", out, *common) == 0
    full = _texts(read_results(out))
    assert len(full) == 7
    # Cut the output to its first two lines (a crash), remove a line from the input, and resume.
    raw = open(out, "rb").read().splitlines(keepends=True)
    open(out, "wb").write(b"".join(raw[:2]))
    del lines[2]
    _write(tmp_path / "in.jsonl", lines)
    assert _run("-i", inp, "-o", out, *common) == 0
    resumed = _texts(read_results(out))
    removed = auto_custom_id(line_hash(json.dumps({"prompt": "Line 2 says:", "max_tokens": 3,
                                                   "temperature": 0}).encode()), 1)
    kept_from_before = {json.loads(line)["custom_id"] for line in raw[:2]}
    expected = {k: v for k, v in full.items() if k != removed or k in kept_from_before}
    assert resumed == expected  # every answer is still attached to the line it was computed from


def test_a_job_that_cannot_run_says_why_and_leaves_no_file(tmp_path, text_model, capsys):
    inp = _write(tmp_path / "in.jsonl", [_completion("a", "hi", max_tokens=2)])
    out = tmp_path / "o.jsonl"
    assert _run("-i", inp, "-o", str(out), "--model", str(tmp_path / "no-model")) == 2
    assert not out.exists() and not os.path.exists(manifest_path(str(out)))
    capsys.readouterr()
    assert _run("-i", str(tmp_path), "-o", str(out), "--model", text_model) == 2
    assert "is a directory" in capsys.readouterr().err
    fifo = str(tmp_path / "fifo")
    os.mkfifo(fifo)
    assert _run("-i", fifo, "-o", str(out), "--model", text_model) == 2
    assert "not a regular file" in capsys.readouterr().err
    assert _run("-i", inp, "-o", str(out), "--model", text_model, "--seed", str(2**64)) == 2
    assert "--seed" in capsys.readouterr().err
    assert not out.exists()


def test_a_full_disk_stops_the_job_with_a_message_and_the_rerun_resumes(tmp_path, text_model, monkeypatch, capsys):
    lines = [_completion(f"r{i}", f"Story {i}:", max_tokens=2, temperature=0) for i in range(6)]
    inp = _write(tmp_path / "in.jsonl", lines)
    out = str(tmp_path / "out.jsonl")
    real = ResultsFile.write_line
    written = []

    def disk_fills_up(self, data):
        if len(written) == 3:
            real(self, data[: len(data) // 2])  # a part of the line made it to the disk
            raise OSError(errno.ENOSPC, "No space left on device")
        written.append(data)
        real(self, data)

    monkeypatch.setattr(ResultsFile, "write_line", disk_fills_up)
    capsys.readouterr()
    assert _run("-i", inp, "-o", out, "--model", text_model, "--max-model-len", "128") == 1
    err = capsys.readouterr().err
    assert "No space left on device" in err and "Traceback" not in err and "rerun" in err
    assert len(read_results(out)) == 3
    monkeypatch.setattr(ResultsFile, "write_line", real)
    assert _run("-i", inp, "-o", out, "--model", text_model, "--max-model-len", "128") == 0
    assert sorted(r["custom_id"] for r in read_results(out)) == [f"r{i}" for i in range(6)]


def test_token_id_batches_run_without_a_tokenizer(tmp_path, tiny_models):
    model = tiny_models["llama"]  # a folder with config and weights only
    lines = [_completion("ids", [5, 6, 7, 8], max_tokens=3, temperature=0),
             _completion("text", "needs a tokenizer", max_tokens=3), _chat("chat", "so does this", max_tokens=3)]
    inp = _write(tmp_path / "in.jsonl", lines)
    out = str(tmp_path / "out.jsonl")
    assert _run("-i", inp, "-o", out, "--model", model, "--skip-tokenizer-init") == 0
    results = {r["custom_id"]: r for r in read_results(out)}
    assert results["ids"]["error"] is None
    assert results["ids"]["response"]["body"]["usage"]["completion_tokens"] == 3
    assert results["text"]["error"]["code"] == results["chat"]["error"]["code"] == "invalid_request"
    assert "--skip-tokenizer-init" in results["text"]["error"]["message"]


def test_a_text_the_tokenizer_rejects_fails_alone(tmp_path, text_model):
    from batchllm import LLM
    from batchllm.batch import run_batch_file

    class Picky:
        """The real tokenizer, except that it raises on any batch holding the word POISON."""

        def __init__(self, real):
            self._real = real

        def __call__(self, texts, **kwargs):
            if any("POISON" in t for t in texts):
                raise RuntimeError("cannot tokenize this")
            return self._real(texts, **kwargs)

        def __getattr__(self, name):
            return getattr(self._real, name)

    llm = LLM(text_model, max_model_len=128)
    llm.tokenizer = Picky(llm.tokenizer)
    lines = [_completion(f"t{i}", f"Text {i}" + (" POISON" if i == 2 else ""), max_tokens=2, temperature=0)
             for i in range(5)]
    out = str(tmp_path / "out.jsonl")
    summary = run_batch_file(llm, _write(tmp_path / "in.jsonl", lines), out, progress=False)
    assert summary.succeeded == 4 and summary.error_codes == {"invalid_prompt": 1}
    bad = {r["custom_id"]: r for r in read_results(out)}["t2"]
    assert "cannot tokenize this" in bad["error"]["message"]
