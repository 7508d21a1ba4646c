"""The results file: one writer, locked before anything reads or changes the file; resumable; crash-safe."""

from __future__ import annotations

import json
import multiprocessing
import os

import pytest

from batchllm.batch.results_file import (
    InputManifest,
    OutputLockedError,
    OutputRefusedError,
    ResultsFile,
    encode_line,
    manifest_path,
    read_results,
    result_line_problem,
    scan_output,
)


def _result(cid, code=None):
    if code is None:
        return {"custom_id": cid, "response": {"status_code": 200, "body": {}}, "error": None}
    return {"custom_id": cid, "response": {"status_code": 400}, "error": {"code": code, "message": "m"}}


def _lines(*records) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def test_scan_under_the_lock_finds_done_ids_duplicate_notices_and_a_torn_line(tmp_path):
    path = tmp_path / "out.jsonl"
    body = _lines(_result("a"), _result("b", "duplicate_custom_id"), _result("c", "invalid_parameter"))
    path.write_text(body + '{"custom_id": "d", "resp')
    with ResultsFile.open(str(path)) as results:
        state = results.scan()
        assert state.done == {"a", "c"} and state.duplicate_notices == {"b": 1} and state.truncated_bytes > 0
        assert path.read_text().startswith(body) and path.read_text() != body  # scanning changes nothing
        results.repair(state)
        assert path.read_text() == body
        results.write(_result("d"))
    assert [r["custom_id"] for r in read_results(str(path))] == ["a", "b", "c", "d"]


def _try_lock(path, queue):
    try:
        ResultsFile.open(path)
        queue.put("opened")
    except OutputLockedError:
        queue.put("locked")


def test_a_refused_writer_leaves_the_file_byte_for_byte(tmp_path):
    path = str(tmp_path / "out.jsonl")
    with ResultsFile.open(path) as results:
        results.write(_result("a"))
        results.write_line(b'{"custom_id": "b", "respo')  # a line being written by the running job
        before = open(path, "rb").read()
        with pytest.raises(OutputLockedError):
            ResultsFile.open(path)  # same process, another open file: flock refuses it too
        queue = multiprocessing.get_context("spawn").Queue()
        proc = multiprocessing.get_context("spawn").Process(target=_try_lock, args=(path, queue))
        proc.start()
        proc.join(60)
        assert queue.get(timeout=5) == "locked"
        assert open(path, "rb").read() == before


def test_rewrite_keeps_the_lock_and_the_duplicate_notices(tmp_path):
    path = str(tmp_path / "out.jsonl")
    with open(path, "w") as f:
        f.write(_lines(_result("a"), _result("b"), _result("b", "duplicate_custom_id"), _result("c")))
    with ResultsFile.open(path) as results:
        assert results.rewrite_without({"b"}) == 1
        with pytest.raises(OutputLockedError):
            ResultsFile.open(path)  # the new file took the name already locked
        results.write(_result("b"))
    assert [(r["custom_id"], (r["error"] or {}).get("code")) for r in read_results(path)] == [
        ("a", None), ("b", "duplicate_custom_id"), ("c", None), ("b", None)]
    assert not [n for n in os.listdir(tmp_path) if "rewrite" in n]


def test_a_failed_job_leaves_no_file_it_created_and_keeps_one_it_found(tmp_path):
    new = str(tmp_path / "new.jsonl")
    with pytest.raises(RuntimeError):
        with ResultsFile.open(new):
            InputManifest("in.jsonl", {"a": 1}).save(manifest_path(new))
            raise RuntimeError("the model did not load")
    assert not os.path.exists(new) and not os.path.exists(manifest_path(new))
    old = tmp_path / "old.jsonl"
    old.write_text("")
    with pytest.raises(RuntimeError):
        with ResultsFile.open(str(old)):
            raise RuntimeError("the model did not load")
    assert old.exists()


def test_result_lines_are_told_from_other_lines():
    assert result_line_problem(_result("a")) is None and result_line_problem(_result("a", "x")) is None
    assert "response" in result_line_problem({"custom_id": "a", "prompt": "hi"})
    assert "custom_id" in result_line_problem({"response": {}, "error": None})
    assert result_line_problem([1]) == "not a JSON object"
    assert result_line_problem({"custom_id": "a", "response": None, "error": None}) is not None


def test_a_custom_id_that_is_not_unicode_round_trips(tmp_path):
    line = encode_line(_result("\ud800x"))
    assert line.isascii() and json.loads(line)["custom_id"] == "\ud800x"
    path = tmp_path / "out.jsonl"
    path.write_bytes(line)
    assert scan_output(str(path)).done == {"\ud800x"}


def test_manifest_round_trip_and_a_foreign_manifest_is_refused(tmp_path):
    path = str(tmp_path / "m.json")
    InputManifest("/data/in.jsonl", {"a": 2**64 - 1, "\ud800": 3}, "model").save(path)
    loaded = InputManifest.load(path)
    assert loaded.line_hashes == {"a": 2**64 - 1, "\ud800": 3} and loaded.input_path == "/data/in.jsonl"
    with open(path, "w") as f:
        json.dump({"format": "something else"}, f)
    with pytest.raises(OutputRefusedError, match="not a run-batch manifest"):
        InputManifest.load(path)
    assert InputManifest.load(str(tmp_path / "missing.json")) is None
