"""vLLM 0.26.0 data-parallel the way users split an offline batch by hand: one process per GPU, each on a
contiguous 1/N of the workload file (issue 16). One process per GPU of the machine is started once; it
runs every phase (N = 1, 2, ..., the GPU count) so that vLLM's engine start (~3 minutes) is paid once.
A phase starts when every process has reached it (a file barrier in --sync); ranks >= N wait it out.
Same engine settings as peer_vllm.py: dummy weights, bf16, prefix caching on (reset before each phase),
greedy, ignore_eos. One JSON line per phase and rank, with wall-clock start and end (epoch seconds), so
the phase's time is max(end) - min(start) over its ranks.

usage (one per GPU k of G, all at once):
  CUDA_VISIBLE_DEVICES=k PYTHONPATH=/root/site python3 benchmarks/peer_vllm_dp.py MODEL_DIR FILE.jsonl \\
      --rank k --world G --phases 1,2,G --sync DIR
"""

from __future__ import annotations

import argparse
import json
import os
import time

from peer_common import greedy_params, prompts, read_requests, start_engine


def shard(items: list, rank: int, parts: int) -> list:
    """The rank-th of `parts` contiguous slices (sizes differ by at most one), as splitting a file by hand."""
    base, extra = divmod(len(items), parts)
    start = rank * base + min(rank, extra)
    return items[start : start + base + (rank < extra)]


def barrier(sync_dir: str, name: str, rank: int, world: int, timeout_s: float = 3600.0) -> None:
    open(os.path.join(sync_dir, f"{name}.{rank}"), "w").close()
    deadline = time.time() + timeout_s
    while sum(os.path.exists(os.path.join(sync_dir, f"{name}.{r}")) for r in range(world)) < world:
        if time.time() > deadline:
            raise TimeoutError(f"barrier {name}: not every one of {world} ranks arrived in {timeout_s:.0f} s")
        time.sleep(0.05)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("file")
    parser.add_argument("--rank", type=int, required=True)
    parser.add_argument("--world", type=int, required=True)
    parser.add_argument("--phases", required=True, help="N of each phase, e.g. 1,2,8 (each <= --world)")
    parser.add_argument("--sync", required=True, help="a folder every rank sees (barrier files)")
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.88)
    args = parser.parse_args()
    phases = [int(n) for n in args.phases.split(",")]
    if not 0 <= args.rank < args.world or any(not 1 <= n <= args.world for n in phases):
        parser.error(f"--rank {args.rank}, --world {args.world}, --phases {args.phases}: need 0 <= rank < world "
                     "and every phase between 1 and world")
    os.makedirs(args.sync, exist_ok=True)
    llm, start_s = start_engine(args.model, gpu_memory_utilization=args.gpu_memory_utilization)
    print(json.dumps({"peer": "vllm", "rank": args.rank, "engine_start_s": round(start_s, 1)}), flush=True)
    reqs = read_requests(args.file)
    for index, n in enumerate(phases):
        llm.reset_prefix_cache()
        barrier(args.sync, f"phase{index}", args.rank, args.world)
        if args.rank >= n:
            continue
        mine = shard(reqs, args.rank, n)
        params = greedy_params(mine)
        start = time.time()
        outs = llm.generate(prompts(mine), params, use_tqdm=False)
        end = time.time()
        print(json.dumps({"peer": "vllm 0.26.0", "workload": os.path.basename(args.file), "replicas": n,
                          "rank": args.rank, "requests": len(mine), "start": start, "end": end,
                          "seconds": round(end - start, 3),
                          "prompt_tokens": sum(len(r["prompt_token_ids"]) for r in mine),
                          "output_tokens": sum(len(o.outputs[0].token_ids) for o in outs)}), flush=True)


if __name__ == "__main__":
    main()
