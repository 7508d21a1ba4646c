"""run-batch --data-parallel over a local Ray (2 CPU replicas of a tiny model): the same results as one engine,
and nothing lost or doubled when a replica or the driver is SIGKILLed mid-job."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

pytest.importorskip("ray")

from batchllm.batch.results_file import read_results  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SYSTEM = "You are a careful assistant. Answer briefly and precisely, in one sentence, without any lists."


def _lines(num_groups: int, members: int, singletons: int, max_tokens: int, seed: int = 3) -> list:
    """Prefix groups of token-id prompts, chat lines sharing a system prompt, singletons and bad lines."""
    rng = random.Random(seed)
    lines = []
    for g in range(num_groups):
        prefix = [rng.randint(1, 900) for _ in range(rng.randint(34, 60))]
        for m in range(members):
            prompt = prefix + [rng.randint(1, 900) for _ in range(rng.randint(2, 12))]
            lines.append({"custom_id": f"g{g}-{m}", "method": "POST", "url": "/v1/completions",
                          "body": {"prompt": prompt, "max_tokens": rng.randint(max_tokens // 2, max_tokens),
                                   "temperature": 0}})
    for q in range(4):
        lines.append({"custom_id": f"chat-{q}", "method": "POST", "url": "/v1/chat/completions",
                      "body": {"messages": [{"role": "system", "content": SYSTEM},
                                            {"role": "user", "content": f"What is {q} plus {q}?"}],
                               "max_tokens": 8, "temperature": 0}})
    for s in range(singletons):
        lines.append({"custom_id": f"s{s}", "method": "POST", "url": "/v1/completions",
                      "body": {"prompt": f"Item {s}: the weather today is", "max_tokens": 6, "temperature": 0}})
    lines.append({"custom_id": "bad-vocab", "method": "POST", "url": "/v1/completions",
                  "body": {"prompt": [10**6], "max_tokens": 3}})
    lines.append({"custom_id": "bad-param", "method": "POST", "url": "/v1/completions",
                  "body": {"prompt": "hi", "max_tokens": -2}})
    lines.append("{not json")
    rng.shuffle(lines)
    return lines


def _write(path, lines) -> str:
    with open(path, "w") as f:
        for line in lines:
            f.write((line if isinstance(line, str) else json.dumps(line)) + "\n")
    return str(path)


def _comparable(results) -> dict:
    """custom_id -> what must match between runs (text, tokens, finish reason; the error code)."""
    out = {}
    for r in results:
        assert r["custom_id"] not in out, f"{r['custom_id']} appears twice"
        if r["error"] is not None:
            out[r["custom_id"]] = ("error", r["error"]["code"])
            continue
        body = r["response"]["body"]
        choice = body["choices"][0]
        text = choice["message"]["content"] if "message" in choice else choice["text"]
        out[r["custom_id"]] = (text, body["usage"]["prompt_tokens"], body["usage"]["completion_tokens"],
                               choice["finish_reason"])
    return out


def _command(inp, out, *extra) -> list[str]:
    return [sys.executable, "-m", "batchllm.entrypoints.cli", "run-batch", "-i", inp, "-o", out, "--no-progress",
            "--max-num-seqs", "64", *extra]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": REPO, "OMP_NUM_THREADS": "1"}


def _single_engine(model, inp, out) -> dict:
    from batchllm import LLM
    from batchllm.batch import run_batch_file

    llm = LLM(model, max_num_seqs=64)
    run_batch_file(llm, inp, out, overwrite=True, progress=False, log=lambda m: None)
    return _comparable(read_results(out))


@pytest.fixture(scope="module")
def small_job(text_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("dp_small")
    inp = _write(root / "in.jsonl", _lines(num_groups=6, members=5, singletons=6, max_tokens=10))
    return text_model, inp, _single_engine(text_model, inp, str(root / "single.jsonl")), root


@pytest.fixture(scope="module")
def long_job(text_model, tmp_path_factory):
    """Long enough (a few seconds per replica) to be killed in the middle."""
    root = tmp_path_factory.mktemp("dp_long")
    inp = _write(root / "in.jsonl", _lines(num_groups=70, members=16, singletons=40, max_tokens=24))
    return text_model, inp, _single_engine(text_model, inp, str(root / "single.jsonl")), root


def test_two_replicas_equal_one_engine(small_job):
    model, inp, expected, root = small_job
    out, summary_path = str(root / "dp.jsonl"), str(root / "summary.json")
    run = subprocess.run(_command(inp, out, "--model", model, "--data-parallel", "2", "--gpus-per-replica", "0",
                                  "--summary-json", summary_path),
                         env=_env(), capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert _comparable(read_results(out)) == expected
    summary = json.load(open(summary_path))
    dp = summary["data_parallel"]
    assert [r["replica"] for r in dp["replicas"]] == [0, 1]
    assert sum(r["requests"] for r in dp["replicas"]) == summary["succeeded"]
    assert dp["failed_replicas"] == 0 and dp["rerun_units"] == 0 and dp["split_groups"] == 0
    # Whole groups per replica keep the one-engine reuse; round-robin rows would lose some of it.
    assert dp["round_robin_reuse_ratio"] < summary["reuse_ratio"]
    assert "reuse kept whole" in run.stderr and "replica 1:" in run.stderr


def _replica_pids() -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if b"EngineReplica" in f.read():
                        pids.append(int(entry))
            except OSError:
                pass
    return pids


def _wait_for_lines(path: str, count: int, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if os.path.exists(path) and sum(1 for _ in open(path, "rb")) >= count:
            return
        if proc.poll() is not None:
            pytest.fail(f"the job ended before the kill: {proc.stderr.read()[-3000:]}")
        time.sleep(0.05)
    pytest.fail("the job wrote too few lines in time")


def _read_in_background(stream) -> list[str]:
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(stream), daemon=True).start()
    return lines


def _wait_for_ready_pids(stderr_lines: list[str], count: int, proc: subprocess.Popen, timeout: float = 300) -> list:
    """The pids of the replicas the driver has reported ready, in the order it did (from its log)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        pids = [int(m.group(1)) for line in list(stderr_lines) if (m := re.search(r"ready: pid (\d+)", line))]
        if len(pids) >= count:
            return pids
        if proc.poll() is not None:
            pytest.fail("the job ended before its replicas were ready: " + "".join(stderr_lines)[-3000:])
        time.sleep(0.05)
    pytest.fail("the replicas were not ready in time")


def test_replica_killed_mid_job_loses_and_doubles_nothing(long_job):
    model, inp, expected, root = long_job
    out, summary_path = str(root / "replica_kill.jsonl"), str(root / "replica_kill.json")
    proc = subprocess.Popen(_command(inp, out, "--model", model, "--data-parallel", "2", "--gpus-per-replica", "0",
                                     "--summary-json", summary_path),
                            env=_env(), stderr=subprocess.PIPE, text=True)
    stderr_lines = _read_in_background(proc.stderr)
    try:
        # The replica that became ready last holds work (on 2 slow cores one may load long after the other
        # has started: killing a replica that never got a unit would rerun nothing).
        victim = _wait_for_ready_pids(stderr_lines, 2, proc)[-1]
        _wait_for_lines(out, 60, proc)  # error lines come first; then results stream in
        assert victim in _replica_pids()
        os.kill(victim, signal.SIGKILL)  # the process itself, not a polite cancel
        proc.wait(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    time.sleep(0.2)  # the reader thread takes the last lines
    stderr = "".join(stderr_lines)
    assert proc.returncode == 0, stderr[-3000:]
    assert len(expected) < 1200 and sum(1 for _ in open(out)) == len(expected)
    assert _comparable(read_results(out)) == expected  # every custom_id exactly once, the same results
    dp = json.load(open(summary_path))["data_parallel"]
    assert dp["failed_replicas"] == 1 and dp["rerun_units"] >= 1, stderr[-3000:]
    assert "restart 1" in stderr


def test_driver_killed_mid_job_resumes_without_duplicates(long_job):
    model, inp, expected, root = long_job
    out = str(root / "driver_kill.jsonl")
    command = _command(inp, out, "--model", model, "--data-parallel", "2", "--gpus-per-replica", "0")
    proc = subprocess.Popen(command, env=_env(), stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_lines(out, 200, proc)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    partial = sum(1 for _ in open(out, "rb"))
    assert partial < len(expected), "the job finished before the kill: make it longer"
    deadline = time.time() + 60  # the local Ray instance shares the driver's fate
    while _replica_pids() and time.time() < deadline:
        time.sleep(0.5)
    assert not _replica_pids(), "replicas outlived their driver"
    rerun = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "resuming" in rerun.stderr
    assert _comparable(read_results(out)) == expected


def test_python_api_data_parallel_and_dry_run_plan(small_job, capsys):
    from batchllm.batch import run_batch_file
    from batchllm.entrypoints.cli import main

    model, inp, expected, root = small_job
    out = str(root / "api.jsonl")
    from batchllm.distributed import DataParallelExecutor

    with DataParallelExecutor.start(model, llm_kwargs={"max_num_seqs": 64}, num_replicas=2, gpus_per_replica=0) as dp:
        summary = run_batch_file(dp, inp, out, overwrite=True, progress=False, log=lambda m: None)
    assert _comparable(read_results(out)) == expected
    assert summary.data_parallel is not None and len(summary.data_parallel["replicas"]) == 2
    assert main(["run-batch", "-i", inp, "-o", str(root / "dry.jsonl"), "--model", model, "--dry-run",
                 "--data-parallel", "3"]) == 0
    printed = capsys.readouterr().out
    assert "data-parallel plan (3 replicas)" in printed and "replica 2:" in printed and "round-robin" in printed
    assert not os.path.exists(root / "dry.jsonl")


def test_replicas_that_cannot_load_stop_the_job_with_the_reason(small_job):
    from batchllm.batch import run_batch_file
    from batchllm.distributed import DataParallelExecutor

    model, inp, _, root = small_job
    out = str(root / "cannot_load.jsonl")
    # One KV block cannot hold a request of max_model_len: every replica fails in LLM(...), none retried.
    with DataParallelExecutor.start(model, llm_kwargs={"num_kv_blocks": 1}, num_replicas=2, gpus_per_replica=0) as dp:
        with pytest.raises(RuntimeError, match="every replica failed.*KV cache fits 1 blocks"):
            run_batch_file(dp, inp, out, overwrite=True, progress=False, log=lambda m: None)
        assert dp.failed_replicas == 2 and all(s.restarts == 0 for s in dp.slots)
    results = read_results(out)  # the error lines of the bad input lines were written before the run
    assert results and all(r["error"] is not None for r in results)
