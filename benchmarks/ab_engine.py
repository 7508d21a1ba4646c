"""A/B timing of one engine switch in one process (device tool): the same workload, the same engine, runs
alternating between the switch's two settings, so that one lease gives a ratio free of card-to-card spread.

usage: python benchmarks/ab_engine.py --switch last-layer-rows [--workload micro-2000-200-16-100 --requests 512]
       [--repeats 2] [--quantization fp8] [--kv-cache-dtype fp8] [--device cpu --smoke]
Prints one line per run and a last line: seconds of A (switch on) / seconds of B (off), medians.
"""

from __future__ import annotations

import argparse
import os
import statistics
from typing import Callable

import bench_setup  # noqa: F401  (first: repo on sys.path)

from batchllm import LLM  # noqa: E402
from batchllm.bench.compare import run_config  # noqa: E402
from batchllm.bench.workloads import make_workload  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def _last_layer_rows(llm: LLM, on: bool) -> None:
    llm.engine.runner.model.last_layer_on_sampled_rows = on


SWITCHES: dict[str, Callable[[LLM, bool], None]] = {
    "last-layer-rows": _last_layer_rows,  # the last layer's o_proj and MLP on the sampled rows only
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--switch", required=True, choices=sorted(SWITCHES))
    parser.add_argument("--workload", default="micro-2000-200-16-100")
    parser.add_argument("--requests", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--model", default=os.path.join(HERE, "models", "llama-3.1-8b"))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quantization", default=None)
    parser.add_argument("--kv-cache-dtype", default="auto")
    parser.add_argument("--smoke", action="store_true", help="CPU interpreter run (bench_setup reads it)")
    args = parser.parse_args()
    on_gpu = args.device == "cuda"
    llm = LLM(args.model, load_format="dummy", dtype="bfloat16" if on_gpu else "float32", device=args.device,
              skip_tokenizer_init=True, max_model_len=4096, quantization=args.quantization,
              kv_cache_dtype=args.kv_cache_dtype)  # fmt: skip
    workload = make_workload(args.workload, args.requests, llm.engine.runner.arch.vocab_size, seed=0)
    switch = SWITCHES[args.switch]
    run_config(llm, "batchllm", workload)  # warm-up: compiles and allocator growth outside the timings
    seconds: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(args.repeats):
        for on in (True, False):
            switch(llm, on)
            result = run_config(llm, "batchllm", workload)
            seconds[on].append(result.seconds)
            print(f"{args.switch}={'on' if on else 'off'} {workload.name} x{args.requests}: {result.seconds:.3f} s, "
                  f"{result.iterations} iterations", flush=True)
    a, b = statistics.median(seconds[True]), statistics.median(seconds[False])
    print(f"AB {args.switch} {workload.name} x{args.requests}: on {a:.3f} s, off {b:.3f} s, off/on {b / a:.4f}")


if __name__ == "__main__":
    main()
