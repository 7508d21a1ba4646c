"""Where a run's time goes (device tool): per-iteration times by kind, then one profiled run broken down by
phase (iterations carrying prompt tokens, pure-decode iterations, the sampler) x kernel kind (GEMM,
attention, elementwise, sampler, copies), CUDA-graph vs eager launches, device idle time (host gaps), the
top kernels, and the prefill and decode phases against their own floors.

usage: python benchmarks/profile_engine.py [--workload micro-2000-200-16-20] [--requests 256] [--config batchllm]
       [--quantization fp8] [--kv-cache-dtype fp8] [--top 18] [--device cuda|cpu]
On CPU (the CI smoke run) the "kernels" are the profiler's operators and their CPU times.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch.profiler import record_function

import bench_setup  # noqa: E402,F401  (first: repo on sys.path)

from batchllm import LLM  # noqa: E402
from batchllm.bench.breakdown import KernelRecord, device_kernel_records, summarize  # noqa: E402
from batchllm.bench.compare import run_config  # noqa: E402
from batchllm.bench.roofline import iteration_floor_seconds, measure_device_rates  # noqa: E402
from batchllm.bench.workloads import make_workload  # noqa: E402
from dummy_engine import add_engine_args, dummy_engine  # noqa: E402
PHASE_PREFIX = "phase:"


def iteration_times(llm: LLM) -> dict:
    """Print ms per prefill-heavy and pure-decode iteration; return the trace columns of the last run (per
    iteration after the first, which has no start stamp): seconds, batch tokens, prompt tokens, KV blocks."""
    trace = llm.engine.trace
    cols = {"dt": np.diff(trace.column("time_s"))}
    for name in ("batch_tokens", "prefill_tokens", "decode_tokens", "kv_blocks_used"):
        cols[name] = np.asarray(trace.column(name))[1:]
    prefill, decode, dt = cols["prefill_tokens"], cols["decode_tokens"], cols["dt"]
    heavy, pure = prefill >= 4096, prefill == 0
    if heavy.any():
        tok = prefill[heavy] + decode[heavy]
        print(f"prefill-heavy iterations: {heavy.sum()}, mean {dt[heavy].mean() * 1e3:.1f} ms, "
              f"{(dt[heavy] / tok).mean() * 1e6:.2f} ms per 1k tokens (mean {tok.mean():.0f} tokens)")
    if pure.any():
        print(f"pure-decode iterations: {pure.sum()}, mean {dt[pure].mean() * 1e3:.1f} ms "
              f"(batch mean {decode[pure].mean():.0f}, median ms {np.median(dt[pure]) * 1e3:.1f})")
    return cols


def label_engine_calls(llm: LLM) -> None:
    """Wrap the runner's forward and sample calls in profiler ranges named by phase, so each kernel can be
    traced back (through its launch) to the kind of iteration that queued it."""
    runner = llm.engine.runner
    forward, sample = runner.forward, runner.sample

    def labelled_forward(plan, *args, **kwargs):
        phase = "prefill" if plan.num_tokens > plan.num_tokens_past_prompt else "decode"
        with record_function(PHASE_PREFIX + phase):
            return forward(plan, *args, **kwargs)

    def labelled_sample(*args, **kwargs):
        with record_function(PHASE_PREFIX + "sample"):
            return sample(*args, **kwargs)

    runner.forward, runner.sample = labelled_forward, labelled_sample


def _phase_of(event) -> str:
    while event is not None:
        if event.name.startswith(PHASE_PREFIX):
            return event.name[len(PHASE_PREFIX) :]
        event = event.cpu_parent
    return "other"


def kernel_records(prof, on_gpu: bool) -> tuple[list[KernelRecord], list[tuple[float, float]]]:
    """The profiled kernels with their phase and launch kind, and their [start, end) microseconds."""
    events = prof.events()
    if on_gpu:
        return device_kernel_records(events, _phase_of)
    records, intervals = [], []  # operators stand for kernels, each with its self time (its children's excluded)
    for e in events:
        if e.name.startswith("aten::"):
            records.append(KernelRecord(e.name, e.self_cpu_time_total, _phase_of(e), False))
            intervals.append((e.time_range.start, e.time_range.end))
    return records, intervals


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workload", default="micro-2000-200-16-20")
    parser.add_argument("--requests", type=int, default=256)
    parser.add_argument("--config", default="batchllm")
    parser.add_argument("--top", type=int, default=18)
    add_engine_args(parser)
    args = parser.parse_args()
    on_gpu = args.device == "cuda"
    llm = dummy_engine(args)
    workload = make_workload(args.workload, args.requests, llm.engine.runner.arch.vocab_size, seed=0)
    result = run_config(llm, args.config, workload)
    print(f"{args.config} {workload.name} x{args.requests}: {result.seconds:.2f} s, {result.iterations} iterations")
    cols = iteration_times(llm)
    label_engine_calls(llm)
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if on_gpu else [])
    with torch.profiler.profile(activities=activities) as prof:
        start = time.perf_counter()
        run_config(llm, args.config, workload)
        wall = time.perf_counter() - start
    records, intervals = kernel_records(prof, on_gpu)
    print(summarize(records, wall, intervals, args.top).table())
    arch, device, block_size = llm.engine.runner.arch, llm.config.device, llm.config.cache.block_size
    kv_bytes = llm.config.kv_dtype.itemsize
    del llm, prof
    if on_gpu:
        torch.cuda.empty_cache()
    rates = measure_device_rates(device, fp8=args.quantization == "fp8")  # with the engine gone: memory is free
    floors = iteration_floor_seconds(cols["batch_tokens"], cols["kv_blocks_used"], arch, rates, block_size,
                                     kv_bytes=kv_bytes,
                                     fp8_linears=args.quantization == "fp8")  # fmt: skip
    for phase, rows in (("with prompt tokens", cols["prefill_tokens"] > 0), ("pure decode", cols["prefill_tokens"] == 0)):
        spent, floor = cols["dt"][rows].sum(), floors[rows].sum()
        print(f"iterations {phase}: {rows.sum()}, {spent:.2f} s (unprofiled run), floor {floor:.2f} s "
              f"({floor / spent if spent else float('nan'):.0%} of it)")


if __name__ == "__main__":
    main()
