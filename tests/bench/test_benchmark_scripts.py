"""The GPU benchmark scripts also run on CPU with tiny shapes, so a broken script shows up in CI and not
in a device lease."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run(*args: str, interpret: bool = False) -> str:
    env = dict(os.environ, TRITON_INTERPRET="1") if interpret else dict(os.environ)
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc.stdout


def test_profile_engine_reports_iterations_and_kernel_groups():
    out = _run("benchmarks/profile_engine.py", "--model", "benchmarks/models/tiny-llama", "--device", "cpu",
               "--workload", "micro-64-16-4-4", "--requests", "16", "--top", "3")  # fmt: skip
    assert "batchllm micro-64-16-4-4 x16" in out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.split()[:1] in (["prefill"], ["decode"], ["sample"])}
    header = next(line.split() for line in out.splitlines() if line.startswith("seconds"))
    assert "gemm" in header and "sampler" in header
    assert float(rows["prefill"][header.index("gemm")]) > 0 and "sample" in rows  # (the sampler: ms here)
    assert "idle (host gaps)" in out and "iterations pure decode: 3" in out


def test_shared_prefix_benchmark_smoke():
    out = _run("benchmarks/bench_shared_prefix.py", "--smoke", "--no-sweep", interpret=True)
    assert "unf/fused" in out and "targets:" in out


def test_shared_prefix_benchmark_smoke_over_an_fp8_cache():
    out = _run("benchmarks/bench_shared_prefix.py", "--smoke", "--no-sweep", "--kv-fp8", interpret=True)
    assert "FP8 KV" in out and "ok" in out and "FP8 dots fused" in out, out[-2000:]


def test_decode_regions_benchmark_smoke():
    out = _run("benchmarks/bench_decode_regions.py", "--smoke", "--kv-fp8", interpret=True)
    regions = [line[:44].strip() for line in out.splitlines() if line.startswith(("cascade", "distinct-only"))]
    assert regions[:3] == ["cascade shared", "cascade distinct", "cascade merge"], out[-2000:]
    assert "distinct-only paged n32 s2" in regions and "check distinct-only fused 32:2 r128: ok" in out


def test_prefill_attention_benchmark_smoke():
    out = _run("benchmarks/bench_prefill_attention.py", "--smoke", interpret=True)
    rows = [line.split()[0] for line in out.splitlines()[-4:]]
    assert rows == ["micro-members", "micro-mixed", "prefix-prefill", "multilevel"], out[-1000:]


def test_replay_schedule_prints_each_configuration():
    out = _run("benchmarks/replay_schedule.py", "--workload", "micro-64-16-4-4", "--requests", "16",
               "--compare", "batchllm,vllm-like", "--kv-blocks", "400", "--estimate")  # fmt: skip
    rows = {line.split()[0]: line.split() for line in out.splitlines()[2:]}
    assert set(rows) == {"batchllm", "vllm-like"}
    # the prefix groups prefill each 64-token prefix once; the baseline's LRU cache finds it after the first
    assert int(rows["batchllm"][2]) <= int(rows["vllm-like"][2])
    assert all(float(r[-1]) > 0 for r in rows.values())


def test_gpu_fp8_check_smoke(tmp_path):
    """The FP8 GPU check's parts on CPU with tiny shapes (the reference FP8 path)."""
    out = _run("benchmarks/gpu_fp8_check.py", str(tmp_path), "--smoke", "--parts",
               "kernels,accuracy,speed_8b_bf16,speed_8b_fp8,speed_8b_fp8kv,speed_8b_fp8_fp8kv_dots", "--workload-dir",
               str(tmp_path))  # fmt: skip
    assert "ERROR" not in out and "tiny-llama fp8 micro-64-16-4-4 x8" in out, out[-2000:]
    assert "tiny-llama bf16 kv-fp8 micro-32-8-2-4 x8" in out and "fp8 " in out.split("tiny-llama micro-64-16-4-4: ")[1]
    assert "tiny-llama fp8 kv-fp8-fp8dots micro-32-8-2-4 x8" in out, out[-2000:]
    assert (tmp_path / "micro-32-8-2-4-x8.jsonl").is_file()  # the file a peer engine would time
    assert "perplexity bf16" in out and (tmp_path / "gpu_fp8_check.json").is_file()
    fused_ops = ("rms_norm", "silu_and_mul", "kv_store")
    assert all(f"fused {op:<13} x3      equal True" in out for op in fused_ops), out[-2000:]


@pytest.mark.parametrize("switch", ["last-layer-rows", "decode-tiles-short-keys"])
def test_ab_engine_times_both_settings_of_a_switch(switch):
    out = _run("benchmarks/ab_engine.py", "--switch", switch, "--model", "benchmarks/models/tiny-llama",
               "--device", "cpu", "--workload", "micro-64-16-4-4", "--requests", "8", "--repeats", "1")
    assert f"{switch}=on micro-64-16-4-4 x8" in out and f"{switch}=off micro-64-16-4-4 x8" in out, out
    ratio = float(out.strip().splitlines()[-1].rsplit("off/on ", 1)[1])
    assert ratio > 0, out
