"""Benchmark of the global prefix analysis (batchllm.prefix) on synthetic token workloads.

Usage:
    python benchmarks/bench_prefix.py --prompts 100000            # doc-QA workload, ~1,000 tokens a prompt
    python benchmarks/bench_prefix.py --prompts 1000000 --no-lru  # 1e9 tokens (needs ~6 GB of RAM)
    python benchmarks/bench_prefix.py --micro                     # paper micro workload 2000/200, k=16

Workload "doc-QA" (multi-level sharing): 100 system prompts (100-300 tokens), documents of 400-800 tokens
each under one system prompt, 1-31 questions per document (16 on average), questions of 100-300 distinct
tokens: ~1,000 tokens a prompt. Prompts are shuffled (FCFS order is not grouped). Token arrays are built
with numpy directly (int32 flat array + offsets); their memory is reported separately.

Printed: wall time of each stage, peak RSS growth during the analysis beyond the token arrays, and stats.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time

import numpy as np

from batchllm.prefix.analysis import groupable_lengths, group_tree, materialize_groups
from batchllm.prefix.lru_sim import simulate_lru_prefix_cache
from batchllm.prefix.stats import compute_stats
from batchllm.prefix.token_arrays import TokenArrays
from batchllm.prefix.tree import tree_from_lcp
from batchllm.prefix.trie_order import trie_order_and_lcp

VOCAB = 128_000


def make_doc_qa_workload(num_prompts: int, seed: int = 0, chunk: int = 50_000) -> TokenArrays:
    rng = np.random.default_rng(seed)
    num_docs = max(1, num_prompts // 16)
    sys_len = rng.integers(100, 301, size=100)
    doc_len = rng.integers(400, 801, size=num_docs)
    doc_sys = rng.integers(0, 100, size=num_docs)
    # 1..31 questions per document, then trimmed/padded to exactly num_prompts prompts.
    per_doc = rng.integers(1, 32, size=num_docs)
    prompt_doc = np.repeat(np.arange(num_docs), per_doc)
    prompt_doc = np.resize(prompt_doc, num_prompts)
    rng.shuffle(prompt_doc)
    q_len = rng.integers(100, 301, size=num_prompts)

    sys_off = np.concatenate([[0], np.cumsum(sys_len)])
    doc_off = sys_off[-1] + np.concatenate([[0], np.cumsum(doc_len)])
    source = rng.integers(0, VOCAB, size=int(doc_off[-1]), dtype=np.int32)  # system prompts, then documents

    p_sys = doc_sys[prompt_doc]
    lengths = sys_len[p_sys] + doc_len[prompt_doc] + q_len
    offsets = np.zeros(num_prompts + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    tokens = np.empty(int(offsets[-1]), dtype=np.int32)
    for lo in range(0, num_prompts, chunk):
        hi = min(lo + chunk, num_prompts)
        seg_start = np.stack([sys_off[p_sys[lo:hi]], doc_off[prompt_doc[lo:hi]]], axis=1).ravel()
        seg_len = np.stack([sys_len[p_sys[lo:hi]], doc_len[prompt_doc[lo:hi]]], axis=1).ravel()
        shared_idx = _ranges(seg_start, seg_len)
        shared = source[shared_idx]
        # Scatter [sys | doc] then the fresh question tokens into each prompt's slot.
        shared_len = sys_len[p_sys[lo:hi]] + doc_len[prompt_doc[lo:hi]]
        dest_shared = _ranges(offsets[lo:hi], shared_len)
        tokens[dest_shared] = shared
        dest_q = _ranges(offsets[lo:hi] + shared_len, q_len[lo:hi])
        tokens[dest_q] = rng.integers(0, VOCAB, size=len(dest_q), dtype=np.int32)
    return TokenArrays(tokens, offsets)


def make_shared_system_workload(num_prompts: int, shared: int, distinct: int, seed: int = 0) -> TokenArrays:
    """Worst case for the sort: every prompt shares one `shared`-token system prompt (distinct=0: identical)."""
    rng = np.random.default_rng(seed)
    system = rng.integers(0, VOCAB, size=shared, dtype=np.int32)
    tokens = np.empty((num_prompts, shared + distinct), dtype=np.int32)
    tokens[:, :shared] = system
    if distinct:
        tokens[:, shared:] = rng.integers(0, VOCAB, size=(num_prompts, distinct), dtype=np.int32)
    offsets = np.arange(num_prompts + 1, dtype=np.int64) * (shared + distinct)
    return TokenArrays(tokens.ravel(), offsets)


def make_micro_workload(num_groups: int, degree: int, shared: int, distinct: int, seed: int = 0) -> TokenArrays:
    """The paper's micro benchmark: groups of `degree` prompts, `shared` common tokens + `distinct` own ones,
    in random (interleaved) order."""
    rng = np.random.default_rng(seed)
    n = num_groups * degree
    group_of = rng.permutation(np.repeat(np.arange(num_groups), degree))
    prefixes = rng.integers(0, VOCAB, size=(num_groups, shared), dtype=np.int32)
    suffixes = rng.integers(0, VOCAB, size=(n, distinct), dtype=np.int32)
    tokens = np.concatenate([prefixes[group_of], suffixes], axis=1).ravel()
    offsets = np.arange(n + 1, dtype=np.int64) * (shared + distinct)
    return TokenArrays(tokens, offsets)


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenation of arange(s, s + l) for each (s, l), vectorised."""
    total = int(lengths.sum())
    seg_begin = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    return np.repeat(starts - seg_begin, lengths) + np.arange(total)


class PeakRss:
    """Polls this process's resident set size in a thread (numpy temporaries come and go quickly)."""

    def __init__(self, interval: float = 0.02) -> None:
        self.interval = interval
        self.peak = self.current()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def current() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.current())
            time.sleep(self.interval)

    def __enter__(self) -> "PeakRss":
        self.baseline = self.current()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.current())


def run(prompts: TokenArrays, block_size: int, lru_blocks: int | None, multi_level: bool) -> dict:
    times: dict[str, float] = {}
    with PeakRss() as rss:
        t0 = time.perf_counter()
        lengths = prompts.lengths
        order, lcp = trie_order_and_lcp(prompts.tokens, prompts.offsets[:-1], groupable_lengths(lengths))
        t1 = time.perf_counter()
        tree = tree_from_lcp(order, lcp, groupable_lengths(lengths))
        t2 = time.perf_counter()
        grouping = group_tree(tree, min_shared_len=block_size, block_size=block_size, align_to_blocks=True,
                              multi_level=multi_level)
        t3 = time.perf_counter()
        groups, _ = materialize_groups(grouping)
        t4 = time.perf_counter()
        lru = simulate_lru_prefix_cache(prompts, lru_blocks, block_size) if lru_blocks is not None else None
        t5 = time.perf_counter()
        stats = compute_stats(lengths, tree, grouping, block_size=block_size, aligned_to_blocks=True,
                              min_shared_len=block_size, multi_level=multi_level, lru=lru)
        t6 = time.perf_counter()
    times = dict(sort_lcp=t1 - t0, tree=t2 - t1, dp=t3 - t2, groups=t4 - t3, lru_sim=t5 - t4, stats=t6 - t5)
    times["analysis_total_excl_lru"] = times["sort_lcp"] + times["tree"] + times["dp"] + times["groups"] + times["stats"]
    return dict(
        prompts=prompts.num_prompts,
        tokens=prompts.num_tokens,
        token_array_gb=(prompts.tokens.nbytes + prompts.offsets.nbytes) / 1e9,
        peak_rss_growth_gb=(rss.peak - rss.baseline) / 1e9,
        seconds={k: round(v, 3) for k, v in times.items()},
        tree_nodes=tree.num_nodes,
        reuse_ratio=round(stats.reuse_ratio, 4),
        trie_reuse_ratio=round(stats.trie_reuse_ratio, 4),
        lru_cache_blocks=lru_blocks,
        lru_reuse_ratio=None if lru is None else round(stats.lru_reuse_ratio, 4),
        groups=stats.groups,
        mean_group_size=round(stats.group_size.mean, 2),
        exact=stats.exact,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=100_000)
    ap.add_argument("--micro", action="store_true", help="paper micro workload (64 groups x 16, 2000/200)")
    ap.add_argument("--workload", choices=("doc-qa", "distinct", "identical", "system"), default="doc-qa",
                    help="doc-qa (default); distinct: 1,000 random tokens each; identical: one 1,000-token "
                         "prompt repeated; system: 900 shared + 100 distinct tokens")
    ap.add_argument("--block-size", type=int, default=16)
    ap.add_argument("--lru-cache-blocks", type=int, default=16_384)
    ap.add_argument("--no-lru", action="store_true")
    ap.add_argument("--multi-level", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    t = time.perf_counter()
    if args.micro:
        prompts = make_micro_workload(64, 16, 2000, 200, args.seed)
    elif args.workload == "distinct":
        prompts = make_shared_system_workload(args.prompts, 0, 1000, args.seed)
    elif args.workload == "identical":
        prompts = make_shared_system_workload(args.prompts, 1000, 0, args.seed)
    elif args.workload == "system":
        prompts = make_shared_system_workload(args.prompts, 900, 100, args.seed)
    else:
        prompts = make_doc_qa_workload(args.prompts, args.seed)
    gen_s = time.perf_counter() - t
    result = run(prompts, args.block_size, None if args.no_lru else args.lru_cache_blocks, args.multi_level)
    result["workload"] = "micro 2000/200 k=16" if args.micro else args.workload
    result["generate_seconds"] = round(gen_s, 2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
