"""Replay a workload's schedule on CPU: the real engine and scheduler over a stub model (zero logits), so
iterations, batch sizes, prefill tokens, peak KV and preemptions come out in seconds for any KV pool size,
without a GPU. Nothing here is a GPU time: `--estimate` adds the per-iteration floor of
`batchllm.bench.roofline.iteration_floor_seconds` (weights plus the KV blocks in use over copy bandwidth,
or the batch's linear-layer FLOPs over the matmul rate, whichever is larger) at the rates given, to
compare schedules before spending device time on them.

usage: python benchmarks/replay_schedule.py --workload multilevel --requests 512 \\
           --compare batchllm,batchllm-single-level,vllm-like --estimate
"""

from __future__ import annotations

import argparse
import os

import numpy as np

import bench_setup  # noqa: E402,F401  (first: repo on sys.path)

from batchllm import LLM, SamplingParams  # noqa: E402
from batchllm.bench.compare import CONFIGS  # noqa: E402
from batchllm.bench.roofline import DeviceRates, iteration_floor_seconds  # noqa: E402
from batchllm.bench.workloads import make_workload  # noqa: E402
from batchllm.model.arch_config import load_arch_config  # noqa: E402
from bench_engine_overhead import HERE, ZeroLogits  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", default="micro-2000-200-16-100")
    parser.add_argument("--requests", type=int, default=1024)
    parser.add_argument("--compare", default="batchllm,vllm-like")
    parser.add_argument("--kv-blocks", type=int, default=27500,
                        help="KV pool size (27500 reproduces the H100 runs of llama-3.1-8b)")
    parser.add_argument("--estimate", action="store_true", help="add a roofline estimate of GPU seconds")
    parser.add_argument("--arch", default=os.path.join(HERE, "models", "llama-3.1-8b"), help="model of the estimate")
    parser.add_argument("--matmul-tflops", type=float, default=780.0)
    parser.add_argument("--copy-gbps", type=float, default=3000.0)
    args = parser.parse_args()
    arch = load_arch_config(args.arch)
    print(f"{args.workload} x{args.requests}, {args.kv_blocks} KV blocks of 16 tokens (stub model, CPU)")
    print(f"{'config':<22}{'iters':>7}{'prefill tok':>12}{'peakKV':>8}{'preempt':>8}{'decode batch p10/p50/p90':>26}"
          + (f"{'est. GPU s':>11}" if args.estimate else ""))
    for name in [c.strip() for c in args.compare.split(",") if c.strip()]:
        config = CONFIGS[name]
        llm = LLM(os.path.join(HERE, "models", "tiny-llama"), load_format="dummy", device="cpu", dtype="float32",
                  skip_tokenizer_init=True, max_model_len=4096, num_kv_blocks=args.kv_blocks,
                  scheduling=config.scheduling, overlap_scheduling=config.overlap_scheduling, **config.options)
        runner = llm.engine.runner
        runner.model = ZeroLogits(runner.arch.vocab_size)
        runner.backend.supports_shared_prefix = config.backend == "triton"  # batches laid out as on the GPU
        workload = make_workload(args.workload, args.requests, runner.arch.vocab_size, seed=0)
        llm.generate([{"prompt_token_ids": p} for p in workload.prompts],
                     [SamplingParams(temperature=0, max_tokens=m, ignore_eos=True) for m in workload.max_tokens],
                     use_tqdm=False)
        trace = llm.engine.trace
        decode = trace.column("decode_tokens")
        pure = decode[trace.column("prefill_tokens") == 0]
        quantiles = "/".join(str(int(q)) for q in np.percentile(pure, [10, 50, 90])) if len(pure) else "-"
        line = (f"{name:<22}{len(trace):>7}{int(trace.column('prefill_tokens').sum()):>12}"
                f"{int(trace.column('kv_blocks_used').max()):>8}{llm.engine.scheduler.counters.preemptions:>8}"
                f"{quantiles:>26}")
        if args.estimate:
            rates = DeviceRates(args.matmul_tflops * 1e12, args.copy_gbps * 1e9)
            estimate = iteration_floor_seconds(trace.column("batch_tokens"), trace.column("kv_blocks_used"), arch, rates, 16)
            line += f"{float(estimate.sum()):>11.3f}"
        print(line, flush=True)


if __name__ == "__main__":
    main()
