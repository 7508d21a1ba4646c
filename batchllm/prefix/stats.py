"""Reuse statistics of a grouping."""

from __future__ import annotations

from typing import Optional

import numpy as np

from batchllm.prefix.grouping import Grouping
from batchllm.prefix.lru_sim import LruResult
from batchllm.prefix.tree import PrefixTree
from batchllm.prefix.types import Distribution, PrefixStats


def size_histogram(sizes: np.ndarray) -> dict[str, int]:
    """Counts of sizes >= 2 in power-of-two buckets: "2", "3-4", "5-8", ..."""
    out: dict[str, int] = {}
    if len(sizes) == 0:
        return out
    sizes = np.asarray(sizes, dtype=np.int64)
    upper_exp = np.ceil(np.log2(np.maximum(sizes, 2))).astype(np.int64)
    for exp, count in zip(*np.unique(upper_exp, return_counts=True)):
        lo, hi = (1 << (int(exp) - 1)) + 1, 1 << int(exp)
        out["2" if hi == 2 else f"{lo}-{hi}"] = int(count)
    return out


def compute_stats(
    lengths: np.ndarray,
    tree: PrefixTree,
    grouping: Grouping,
    *,
    block_size: int,
    aligned_to_blocks: bool,
    min_shared_len: int,
    multi_level: bool,
    lru: Optional[LruResult] = None,
) -> PrefixStats:
    prompt_tokens = int(lengths.sum())
    grouped = grouping.request_group >= 0
    members = np.bincount(grouping.request_group[grouped], minlength=len(grouping.group_node))
    if multi_level:
        # A nested group serves the requests of its whole subtree.
        members = tree.node_count[grouping.group_node]
    trie_saved = tree.shared_token_total()

    def ratio(x: int) -> float:
        return x / prompt_tokens if prompt_tokens else 0.0

    return PrefixStats(
        prompts=len(lengths),
        prompt_tokens=prompt_tokens,
        prefill_tokens=prompt_tokens - grouping.saved_tokens,
        saved_tokens=grouping.saved_tokens,
        reuse_ratio=ratio(grouping.saved_tokens),
        trie_saved_tokens=trie_saved,
        trie_reuse_ratio=ratio(trie_saved),
        groups=len(grouping.group_node),
        grouped_prompts=int(grouped.sum()),
        ungrouped_prompts=int((~grouped).sum()),
        group_size=Distribution.of(members),
        shared_prefix_len=Distribution.of(grouping.group_shared_len),
        group_size_histogram=size_histogram(members),
        block_size=block_size,
        aligned_to_blocks=aligned_to_blocks,
        min_shared_len=min_shared_len,
        multi_level=multi_level,
        exact=grouping.exact,
        lru_cache_blocks=None if lru is None else lru.cache_blocks,
        lru_saved_tokens=None if lru is None else lru.hit_tokens,
        lru_reuse_ratio=None if lru is None else lru.reuse_ratio,
    )
