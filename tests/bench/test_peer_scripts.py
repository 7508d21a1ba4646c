"""The single-GPU vLLM peer scripts (benchmarks/peer_vllm.py, peer_vllm_n.py) run end to end against a
stand-in `vllm` package, so a broken script shows up in CI and not in a device lease: the engine arguments
they pass and the JSON lines they print."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.bench.fake_vllm import write_fake_vllm

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "benchmarks")


def _run(fake: str, script: str, *args: str) -> tuple[list[dict], dict]:
    proc = subprocess.run([sys.executable, os.path.join(BENCH, script), *args], env=dict(os.environ, PYTHONPATH=fake),
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    kwargs = next(json.loads(line)["fake_llm_kwargs"] for line in proc.stderr.splitlines() if "fake_llm_kwargs" in line)
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")], kwargs


def _workload(path, rows: list[dict]) -> str:
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return str(path)


def test_peer_vllm_times_each_file_with_the_asked_quantization(tmp_path):
    fake = write_fake_vllm(str(tmp_path / "fake"))
    a = _workload(tmp_path / "a.jsonl", [{"prompt_token_ids": [1, 2, 3], "max_tokens": 4}] * 3)
    b = _workload(tmp_path / "b.jsonl", [{"prompt_token_ids": [7] * 10, "max_tokens": 2}])
    lines, kwargs = _run(fake, "peer_vllm.py", "model", "--quantization", "fp8", "--kv-cache-dtype", "fp8", a, b)
    assert kwargs["quantization"] == "fp8" and kwargs["kv_cache_dtype"] == "fp8"
    assert kwargs["enable_prefix_caching"] and kwargs["load_format"] == "dummy" and kwargs["max_model_len"] == 8192
    start, *files = lines
    assert start["config"] == "fp8 kv-fp8" and "engine_start_s" in start
    assert [(f["workload"], f["requests"], f["prompt_tokens"], f["output_tokens"]) for f in files] == [
        ("a.jsonl", 3, 9, 12), ("b.jsonl", 1, 10, 2)]


def test_peer_vllm_n_counts_every_sample(tmp_path):
    fake = write_fake_vllm(str(tmp_path / "fake"))
    path = _workload(tmp_path / "n.jsonl", [{"prompt_token_ids": [1] * 5, "max_tokens": 3, "n": 4}] * 2)
    lines, kwargs = _run(fake, "peer_vllm_n.py", "model", path)
    assert kwargs["max_model_len"] == 4096 and kwargs.get("quantization") is None
    assert lines[-1]["prompts"] == 2 and lines[-1]["n"] == 4 and lines[-1]["generated_tokens"] == 2 * 4 * 3
