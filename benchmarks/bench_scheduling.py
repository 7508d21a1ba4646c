"""CPU-measurable scheduling gain: prefill tokens computed and iterations, BatchLLM vs the vLLM-like baseline.

A paper-style micro workload (shared prefix S, distinct D, sharing degree k, output O) scaled to a tiny
dummy Llama, with the requests of different groups interleaved (as in a real file) and a KV pool smaller
than the working set, so an LRU prefix cache loses prefixes before their last user runs.

Usage: python benchmarks/bench_scheduling.py [--shared 512 --distinct 32 --degree 16 --groups 8 --output 32]
       [--kv-blocks 320] [--trace-dir docs] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

import bench_setup  # noqa: E402,F401  (first: repo on sys.path)

from batchllm import LLM, SamplingParams  # noqa: E402

MODEL = os.path.join(os.path.dirname(os.path.abspath(__file__)), "models", "tiny-llama")

CONFIGS = {
    "vllm-like": dict(scheduling="vllm-like"),
    "+prefix-clustering": dict(scheduling="vllm-like", prefix_clustering=True),
    "+decode-first": dict(scheduling="vllm-like", decode_first=True),
    "+memory-batching": dict(scheduling="vllm-like", token_batching="memory"),
    "batchllm": dict(scheduling="batchllm"),
}


def micro_workload(shared: int, distinct: int, degree: int, groups: int, vocab: int, seed: int) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    prefixes = rng.integers(2, vocab, size=(groups, shared))
    prompts = []
    for member in range(degree):  # interleaved: group 0, 1, ..., then the next member of each
        for g in range(groups):
            prompts.append(prefixes[g].tolist() + rng.integers(2, vocab, size=distinct).tolist())
    return prompts


def run_config(name: str, options: dict, prompts, output: int, args) -> dict:
    llm = LLM(MODEL, load_format="dummy", device="cpu", skip_tokenizer_init=True, num_kv_blocks=args.kv_blocks,
              max_num_batched_tokens=args.budget, max_num_seqs=args.max_num_seqs, max_model_len=2048, **options)
    params = SamplingParams(temperature=0, max_tokens=output, ignore_eos=True)
    start = time.perf_counter()
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    elapsed = time.perf_counter() - start
    assert all(len(o.outputs[0].token_ids) == output for o in outputs)
    trace = llm.engine.trace
    if args.trace_dir:
        llm.save_trace(os.path.join(args.trace_dir, f"trace_{name.strip('+')}.json"), label=name)
    counters = llm.engine.scheduler.counters
    return {
        "config": name,
        "prefill_tokens": int(trace.column("prefill_tokens").sum()),
        "iterations": len(trace),
        "mean_batch_tokens": float(trace.column("batch_tokens").mean()),
        "peak_kv_blocks": int(trace.column("kv_blocks_used").max()),
        "preemptions": counters.preemptions,
        "seconds": elapsed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=int, default=512)
    parser.add_argument("--distinct", type=int, default=32)
    parser.add_argument("--degree", type=int, default=16)
    parser.add_argument("--groups", type=int, default=8)
    parser.add_argument("--output", type=int, default=32)
    parser.add_argument("--kv-blocks", type=int, default=320, help="KV pool size in blocks of 16 tokens")
    parser.add_argument("--budget", type=int, default=2048, help="max_num_batched_tokens")
    parser.add_argument("--max-num-seqs", type=int, default=64, help="count cap of the vLLM-like baseline")
    parser.add_argument("--trace-dir", default=None)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    prompts = micro_workload(args.shared, args.distinct, args.degree, args.groups, 2048, seed=0)
    prompt_tokens = sum(len(p) for p in prompts)
    results = [run_config(name, options, prompts, args.output, args) for name, options in CONFIGS.items()]
    base = results[0]
    print(f"\nmicro {args.shared}/{args.distinct} k={args.degree}, {len(prompts)} requests, output {args.output}, "
          f"{prompt_tokens} prompt tokens, KV pool {args.kv_blocks} blocks x 16")
    print(f"{'config':<20} {'prefill tok':>11} {'vs base':>8} {'iterations':>10} {'vs base':>8} "
          f"{'tok/iter':>8} {'peak KV':>7} {'preempt':>7} {'seconds':>8}")
    for r in results:
        print(f"{r['config']:<20} {r['prefill_tokens']:>11} {r['prefill_tokens'] / base['prefill_tokens']:>8.3f} "
              f"{r['iterations']:>10} {r['iterations'] / base['iterations']:>8.3f} {r['mean_batch_tokens']:>8.1f} "
              f"{r['peak_kv_blocks']:>7} {r['preemptions']:>7} {r['seconds']:>8.2f}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"args": vars(args), "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
