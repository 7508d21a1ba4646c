"""Where a run's GPU time goes (device tool): per-iteration times by kind, and a torch.profiler kernel table.

usage: python benchmarks/profile_engine.py [--workload micro-2000-200-16-20] [--requests 256] [--config batchllm]
Prints: ms per prefill-heavy iteration (and per 1k tokens), ms per pure-decode iteration, then the CUDA
kernels grouped (GEMM / attention / other) and the top kernels by device time.
"""

from __future__ import annotations

import argparse
import os
from collections import defaultdict

import numpy as np
import torch

import bench_setup  # noqa: E402,F401  (first: repo on sys.path)

from batchllm import LLM  # noqa: E402
from batchllm.bench.compare import run_config  # noqa: E402
from batchllm.bench.workloads import make_workload  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def kernel_group(name: str) -> str:
    low = name.lower()
    if any(k in low for k in ("gemm", "nvjet", "cutlass", "sm90_xmma", "cublas", "matmul")):
        return "gemm"
    if any(k in low for k in ("_shared_prefix_kernel", "_paged_attn_kernel", "_merge")):
        return "attention"
    return "other"


def _self_time(event) -> float:
    """Microseconds of the event itself, on the GPU (or the CPU for a CPU smoke run)."""
    return event.self_device_time_total or event.self_cpu_time_total


def iteration_times(llm: LLM) -> None:
    trace = llm.engine.trace
    t = trace.column("time_s")
    dt = np.diff(np.concatenate([[0.0], t]))[1:]  # the first row has no start stamp
    prefill = trace.column("prefill_tokens")[1:]
    decode = trace.column("decode_tokens")[1:]
    heavy = prefill >= 4096
    pure = prefill == 0
    if heavy.any():
        tok = prefill[heavy] + decode[heavy]
        print(f"prefill-heavy iterations: {heavy.sum()}, mean {dt[heavy].mean() * 1e3:.1f} ms, "
              f"{(dt[heavy] / tok).mean() * 1e6:.2f} ms per 1k tokens (mean {tok.mean():.0f} tokens)")
    if pure.any():
        print(f"pure-decode iterations: {pure.sum()}, mean {dt[pure].mean() * 1e3:.1f} ms "
              f"(batch mean {decode[pure].mean():.0f}, median ms {np.median(dt[pure]) * 1e3:.1f})")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workload", default="micro-2000-200-16-20")
    parser.add_argument("--requests", type=int, default=256)
    parser.add_argument("--config", default="batchllm")
    parser.add_argument("--top", type=int, default=18)
    parser.add_argument("--model", default=os.path.join(HERE, "models", "llama-3.1-8b"))
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    llm = LLM(args.model, load_format="dummy", dtype="bfloat16" if args.device == "cuda" else "float32",
              device=args.device, skip_tokenizer_init=True, max_model_len=4096)
    workload = make_workload(args.workload, args.requests, llm.engine.runner.arch.vocab_size, seed=0)
    result = run_config(llm, args.config, workload)
    print(f"{args.config} {workload.name} x{args.requests}: {result.seconds:.2f} s, {result.iterations} iterations")
    iteration_times(llm)
    on_gpu = args.device == "cuda"
    activity = torch.profiler.ProfilerActivity.CUDA if on_gpu else torch.profiler.ProfilerActivity.CPU
    with torch.profiler.profile(activities=[activity]) as prof:
        run_config(llm, args.config, workload)
    kind = torch.autograd.DeviceType.CUDA if on_gpu else torch.autograd.DeviceType.CPU
    events = [e for e in prof.key_averages() if e.device_type == kind]
    total = sum(_self_time(e) for e in events) or 1.0
    groups: dict[str, float] = defaultdict(float)
    for e in events:
        groups[kernel_group(e.key)] += _self_time(e)
    print("device time by group: " + ", ".join(f"{g} {v / 1e6:.2f} s ({v / total:.0%})" for g, v in groups.items()))
    print(f"{'kernel':<70}{'calls':>8}{'total s':>9}{'share':>7}")
    for e in sorted(events, key=lambda e: -_self_time(e))[: args.top]:
        print(f"{e.key[:70]:<70}{e.count:>8}{_self_time(e) / 1e6:>9.3f}{_self_time(e) / total:>7.1%}")


if __name__ == "__main__":
    main()
