"""``analyze_prefixes``: prompts -> prefix tree -> prefix groups + statistics (the scheduler's input)."""

from __future__ import annotations

from typing import Optional, Sequence, Union

import numpy as np

from batchllm.prefix.grouping import (
    DEFAULT_MAX_TABLE_CELLS,
    Grouping,
    first_level_grouping,
    multi_level_grouping,
    node_shared_len,
)
from batchllm.prefix.lru_sim import simulate_lru_prefix_cache
from batchllm.prefix.stats import compute_stats
from batchllm.prefix.token_arrays import TokenArrays
from batchllm.prefix.tree import PrefixTree, build_prefix_tree
from batchllm.prefix.types import PrefixAnalysis, PrefixGroup

Prompts = Union[TokenArrays, Sequence[Sequence[int]], tuple]


def groupable_lengths(lengths: np.ndarray) -> np.ndarray:
    """Every request keeps at least its last token to prefill itself: its logits start the decoding."""
    return np.maximum(lengths - 1, 0)


def analyze_prefixes(
    prompts: Prompts,
    *,
    min_shared_len: Optional[int] = None,
    block_size: int = 16,
    align_to_blocks: bool = True,
    multi_level: bool = False,
    lru_cache_blocks: Optional[int] = None,
    max_table_cells: int = DEFAULT_MAX_TABLE_CELLS,
) -> PrefixAnalysis:
    """Group requests by shared prefix to maximise the prefill tokens saved.

    prompts: TokenArrays, a (tokens, offsets) pair of numpy arrays, or a sequence of token-id sequences.
    min_shared_len: a shared prefix shorter than this is not worth a prefix pass (default: one block).
    block_size: KV block size; with align_to_blocks, shared prefixes are cut to whole blocks (so shared KV
        blocks can be referenced, not copied).
    multi_level: allow nested groups (sys prompt -> document -> question), each level's KV stored once.
    lru_cache_blocks: also simulate an LRU prefix cache of this many blocks in input order.
    """
    if block_size <= 0:
        raise ValueError(f"block_size={block_size} must be positive")
    if min_shared_len is None:
        min_shared_len = block_size
    if min_shared_len < 0:
        raise ValueError(f"min_shared_len={min_shared_len} must be >= 0")
    token_arrays = TokenArrays.from_any(prompts)
    lengths = token_arrays.lengths
    tree = build_prefix_tree(token_arrays, groupable_lengths(lengths))
    grouping = group_tree(
        tree,
        min_shared_len=min_shared_len,
        block_size=block_size,
        align_to_blocks=align_to_blocks,
        multi_level=multi_level,
        max_table_cells=max_table_cells,
    )
    lru = None
    if lru_cache_blocks is not None:
        lru = simulate_lru_prefix_cache(token_arrays, lru_cache_blocks, block_size)
    stats = compute_stats(
        lengths,
        tree,
        grouping,
        block_size=block_size,
        aligned_to_blocks=align_to_blocks,
        min_shared_len=min_shared_len,
        multi_level=multi_level,
        lru=lru,
    )
    groups, request_group = materialize_groups(grouping)
    return PrefixAnalysis(groups=groups, request_group=request_group, stats=stats, tree=tree)


def group_tree(
    tree: PrefixTree,
    *,
    min_shared_len: int,
    block_size: int,
    align_to_blocks: bool,
    multi_level: bool,
    max_table_cells: int = DEFAULT_MAX_TABLE_CELLS,
) -> Grouping:
    shared_len = node_shared_len(tree, block_size, align_to_blocks)
    if multi_level:
        return multi_level_grouping(tree, shared_len, min_shared_len)
    return first_level_grouping(tree, shared_len, min_shared_len, max_table_cells)


def materialize_groups(grouping: Grouping) -> tuple[tuple[PrefixGroup, ...], np.ndarray]:
    """PrefixGroup objects (member arrays are read-only views of one sorted array) and request -> group id."""
    num_sharing = len(grouping.group_node)
    request_group = grouping.request_group.copy()
    has_ungrouped = bool((request_group < 0).any())
    request_group[request_group < 0] = num_sharing  # the ungrouped group goes last
    by_group = np.argsort(request_group, kind="stable")  # stable: members ascending
    by_group.flags.writeable = False
    bounds = np.searchsorted(request_group[by_group], np.arange(num_sharing + 2)).tolist()
    lens = grouping.group_shared_len.tolist()
    parents = grouping.group_parent.tolist()
    groups = [
        PrefixGroup(g, lens[g], by_group[bounds[g] : bounds[g + 1]], None if parents[g] < 0 else parents[g])
        for g in range(num_sharing)
    ]
    if has_ungrouped:
        groups.append(PrefixGroup(num_sharing, 0, by_group[bounds[num_sharing] : bounds[num_sharing + 1]], None))
    return tuple(groups), request_group
