"""Driver cost of data parallelism at scale (CPU, no model): the job's prefix analysis, the work-unit plan,
the dispatch of every unit's arrays into Ray's object store (and, beside it, the round-robin comparison), for N requests
of ~1000 tokens. Reports seconds per step and the driver's memory beyond the token arrays.

usage: python3 benchmarks/bench_driver_scale.py --requests 1000000 --replicas 8 [--no-ray]
"""

from __future__ import annotations

import argparse
import json
import resource
import threading
import time
from array import array

import numpy as np

from batchllm.batch.store import CompactRequests
from batchllm.batch.work_units import plan_from_analysis, round_robin_prefill_tokens
from batchllm.prefix import analyze_prefixes
from batchllm.sampling_params import SamplingParams


def rss_gib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 2**20
    return 0.0


def peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def synthetic_requests(n: int, seed: int) -> CompactRequests:
    """Zipf-like prefix groups (shared prefixes of 600-900 tokens) and singletons; prompts of ~1000 tokens.
    Filled as arrays, as the job's reader leaves them (its per-line parsing is not what is measured)."""
    rng = np.random.default_rng(seed)
    sizes = np.minimum(rng.zipf(1.6, size=n), 2000)
    sizes = sizes[np.cumsum(sizes) <= n]
    sizes = np.concatenate([sizes, np.ones(n - int(sizes.sum()), dtype=sizes.dtype)])
    group_of = np.repeat(np.arange(len(sizes)), sizes)
    prefix_len = np.where(sizes[group_of] > 1, rng.integers(600, 900, size=len(sizes))[group_of], 0)
    lengths = prefix_len + rng.integers(100, 400, size=n)
    lengths[prefix_len == 0] = rng.integers(700, 1300, size=int((prefix_len == 0).sum()))
    order = rng.permutation(n)  # shuffled input order
    group_of, prefix_len, lengths = group_of[order], prefix_len[order], lengths[order]
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    tokens = rng.integers(1, 120000, size=int(offsets[-1]), dtype=np.int32)
    # The shared prefix of a group: the same tokens at the start of each member (group id seeds them).
    prefix_tokens = rng.integers(1, 120000, size=(900,), dtype=np.int32)
    starts = offsets[:-1]
    for g_len in np.unique(prefix_len[prefix_len > 0]):
        rows = np.flatnonzero(prefix_len == g_len)
        index = starts[rows][:, None] + np.arange(g_len)[None, :]
        tokens[index] = (prefix_tokens[None, :g_len] + group_of[rows][:, None] * 7919) % 120000 + 1
    requests = CompactRequests()
    requests._tokens = array("i", tokens.tobytes())
    requests._lengths = array("q", lengths.astype(np.int64).tobytes())
    requests.custom_ids = [f"r{i}" for i in range(n)]
    requests.kinds = bytearray(n)
    requests._params = [SamplingParams(temperature=0.0, max_tokens=200)]
    requests.param_index = array("i", bytes(4 * n))
    requests.seeds = array("q", np.full(n, -1, dtype=np.int64).tobytes())
    requests.model_index = array("i", bytes(4 * n))
    requests.output_budget = array("q", np.full(n, 200, dtype=np.int64).tobytes())
    return requests


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=100_000)
    ap.add_argument("--replicas", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-ray", action="store_true", help="plan only; build each unit's arrays but put nothing")
    ap.add_argument("--out", default=None, help="also write the numbers as JSON here")
    args = ap.parse_args()

    t = time.perf_counter()
    requests = synthetic_requests(args.requests, args.seed)
    build_s = time.perf_counter() - t
    base_rss = rss_gib()  # token arrays and per-request fields in place: what the job holds after reading
    row = {"requests": args.requests, "tokens": int(len(requests.tokens)), "replicas": args.replicas,
           "token_array_gib": round(requests.tokens.nbytes / 2**30, 2), "rss_after_reading_gib": round(base_rss, 2),
           "build_s": round(build_s, 1)}
    steps = {}
    t = time.perf_counter()
    offsets = requests.offsets
    analysis = analyze_prefixes(requests.build(), block_size=16)
    steps["analyse_s"] = time.perf_counter() - t
    t = time.perf_counter()
    plan = plan_from_analysis(analysis, np.diff(offsets), np.frombuffer(requests.output_budget, dtype=np.int64),
                              args.replicas)
    steps["plan_s"] = time.perf_counter() - t
    # As in the dispatcher: the round-robin comparison (for the summary only) runs beside the dispatch.
    round_robin = {}

    def compare() -> None:
        start = time.perf_counter()
        round_robin["tokens"] = round_robin_prefill_tokens(requests.tokens, offsets, args.replicas)
        round_robin["s"] = time.perf_counter() - start

    ray = None
    if not args.no_ray:
        import ray

        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 object_store_memory=2 * 2**30)
    t = time.perf_counter()
    thread = threading.Thread(target=compare)
    thread.start()
    for unit in plan.units:
        work = requests.select(unit.request_ids, offsets)
        if ray is not None:
            ref = ray.put(work)  # what the dispatcher sends; a replica would read it, here it is dropped
            del ref
        del work
    steps["dispatch_s"] = time.perf_counter() - t
    row.update({k: round(v, 2) for k, v in steps.items()})
    row["planning_and_dispatch_s"] = round(sum(steps.values()), 2)
    thread.join()
    row["round_robin_beside_dispatch_s"] = round(round_robin["s"], 2)
    row["peak_rss_beyond_reading_gib"] = round(peak_gib() - base_rss, 2)
    row.update(units=plan.num_units, split_groups=len(plan.split_groups), imbalance=round(plan.imbalance, 4),
               reuse_ratio=round(analysis.stats.reuse_ratio, 4),
               round_robin_reuse_ratio=round(1 - round_robin["tokens"] / analysis.stats.prompt_tokens, 4))
    if ray is not None:
        ray.shutdown()
    print(json.dumps(row))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(row, f, indent=2)


if __name__ == "__main__":
    main()
