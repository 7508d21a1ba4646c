"""Write a benchmark workload JSONL (the same generators as `batchllm bench --workload`).

    python benchmarks/workloads.py micro-2000-200-16-100 --requests 1024 --vocab 128256 -o micro.jsonl
"""

from __future__ import annotations

import argparse

import bench_setup  # noqa: E402,F401  (first: repo on sys.path)

from batchllm.bench.workloads import make_workload  # noqa: E402

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name")
    parser.add_argument("--requests", type=int, default=1024)
    parser.add_argument("--vocab", type=int, default=128256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("-o", "--output", required=True)
    args = parser.parse_args()
    workload = make_workload(args.name, args.requests, args.vocab, args.seed)
    workload.write_jsonl(args.output)
    print(f"{args.output}: {len(workload.prompts)} requests, {workload.prompt_tokens} prompt tokens, "
          f"{workload.output_tokens} output tokens")
