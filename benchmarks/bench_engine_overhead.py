"""CPU cost of the engine loop per iteration (scheduling, input preparation, sampling, bookkeeping), with
the model replaced by a stub that returns zero logits: what a GPU iteration pays on the host when nothing
overlaps it. Runs on CPU.

usage: python benchmarks/bench_engine_overhead.py [--workload micro-2000-200-16-100] [--requests 1024]
       [--repeat 3] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import time

import torch

import bench_setup  # noqa: E402,F401  (first: repo on sys.path)

from batchllm import LLM, SamplingParams  # noqa: E402
from batchllm.bench.workloads import make_workload  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


class ZeroLogits(torch.nn.Module):
    def __init__(self, vocab_size: int) -> None:
        super().__init__()
        self.vocab_size = vocab_size

    def forward(self, input_ids, positions, kv_caches, meta, backend, logits_indices):
        return torch.zeros(len(logits_indices), self.vocab_size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", default="micro-2000-200-16-100")
    parser.add_argument("--requests", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="cProfile one run, print the top functions")
    parser.add_argument("--no-overlap", action="store_true", help="read each iteration's tokens before the next")
    args = parser.parse_args()
    llm = LLM(os.path.join(HERE, "models", "tiny-llama"), load_format="dummy", device="cpu", dtype="float32",
              skip_tokenizer_init=True, max_model_len=4096, num_kv_blocks=40000,
              overlap_scheduling=not args.no_overlap)
    runner = llm.engine.runner
    runner.model = ZeroLogits(runner.arch.vocab_size)
    runner.backend.supports_shared_prefix = True  # lay batches out for the shared kernel, as the GPU backend does
    workload = make_workload(args.workload, args.requests, runner.arch.vocab_size, seed=0)
    prompts = [{"prompt_token_ids": p} for p in workload.prompts]
    params = [SamplingParams(temperature=0, max_tokens=m, ignore_eos=True) for m in workload.max_tokens]
    profiler = cProfile.Profile() if args.profile else None
    times = []
    for _ in range(args.repeat):
        iterations_before = len(llm.engine.trace)  # the trace runs on across generate calls
        start = time.perf_counter()
        if profiler:
            profiler.enable()
        llm.generate(prompts, params, use_tqdm=False)
        if profiler:
            profiler.disable()
        times.append(time.perf_counter() - start)
        iterations = len(llm.engine.trace) - iterations_before
    best = min(times)
    print(f"{workload.name} x{args.requests}: {iterations} iterations; generate {best:.3f} s (best of "
          f"{args.repeat}), {best / iterations * 1e3:.2f} ms per iteration, validation and analysis included")
    if profiler:
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(25)


if __name__ == "__main__":
    main()
