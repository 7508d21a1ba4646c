"""Lexicographic order of prompts and the longest common prefix (LCP) of sorted neighbours.

Sorted order + neighbour LCPs determine the compact prefix tree (see tree.py). We sort most-significant
block first, only ever touching prompts whose prefix is still shared with another prompt:

* level k looks at block k (tokens 16k..16k+15) of every prompt still in a bucket (a set of >= 2 prompts
  with equal first k blocks, occupying a known range of final positions);
* rows are grouped by (bucket, hash of the block) with one fast argsort, the grouping is verified exactly
  against the tokens (a hash collision falls back to an exact lexicographic sort of that level), and
  sibling groups are put in true lexicographic token order (only where a bucket actually splits);
* a group of one prompt is placed; a group of identical prompts that all end here is placed; any other
  group becomes a bucket of the next level.

Work is proportional to the tokens that are shared with some other prompt, plus one block per prompt —
every step is a numpy call over the rows of a level; there is no per-token or per-prompt Python loop.
"""

from __future__ import annotations

import numpy as np

from batchllm.prefix.block_hash import HASH_BLOCK, PAD, common_prefix_len, gather_blocks, hash_rows, lexicographic_order


def trie_order_and_lcp(tokens: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sort prompts ``tokens[starts[i] : starts[i] + lengths[i]]`` lexicographically.

    Returns (order, lcp): order[j] is the prompt at sorted position j (identical prompts adjacent, in no
    particular order among themselves); lcp[0] = 0 and lcp[j] = LCP(order[j - 1], order[j]) in tokens.
    """
    n = len(starts)
    order = np.full(n, -1, dtype=np.int64)
    lcp = np.zeros(n, dtype=np.int64)
    if n == 0:
        return order, lcp
    limits = starts.astype(np.int64) + lengths.astype(np.int64)
    active = np.arange(n, dtype=np.int64)
    bucket_start = np.zeros(n, dtype=np.int64)
    depth = 0
    while len(active):
        active, bucket_start = _refine_level(tokens, starts, limits, active, bucket_start, depth, order, lcp)
        depth += HASH_BLOCK
    return order, lcp


def _refine_level(
    tokens: np.ndarray,
    starts: np.ndarray,
    limits: np.ndarray,
    active: np.ndarray,
    bucket_start: np.ndarray,
    depth: int,
    order: np.ndarray,
    lcp: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    m = len(active)
    blocks = gather_blocks(tokens, starts[active] + depth, limits[active])
    new_bucket = np.empty(m, dtype=bool)
    new_bucket[0] = True
    np.not_equal(bucket_start[1:], bucket_start[:-1], out=new_bucket[1:])
    bucket_rank = np.cumsum(new_bucket) - 1
    num_buckets = int(bucket_rank[-1]) + 1

    # One argsort on (bucket rank | truncated hash) groups equal blocks inside each bucket.
    hashes = hash_rows(blocks)
    rank_bits = int(num_buckets - 1).bit_length()
    key = hashes >> np.uint64(rank_bits) if rank_bits else hashes
    if rank_bits:
        key |= bucket_rank.astype(np.uint64) << np.uint64(64 - rank_bits)
    perm = np.argsort(key)
    key = key[perm]
    starts_new_group = np.empty(m, dtype=bool)
    starts_new_group[0] = True
    np.not_equal(key[1:], key[:-1], out=starts_new_group[1:])
    blocks = blocks[perm]
    active = active[perm]
    bucket_start = bucket_start[perm]
    bucket_rank = bucket_rank[perm]
    group_first = np.flatnonzero(starts_new_group)
    group_of_row = np.cumsum(starts_new_group) - 1
    wide = blocks.view(np.int64)  # 8 int64 compares per row instead of 16 int32 ones
    exact = bool((wide == wide[group_first[group_of_row]]).all())
    siblings_sorted = False
    if not exact:
        # A hash collision (astronomically rare): sort this level exactly by tokens instead.
        perm = lexicographic_order(blocks, major_key=bucket_rank)
        blocks, active, bucket_start, bucket_rank = blocks[perm], active[perm], bucket_start[perm], bucket_rank[perm]
        wide = blocks.view(np.int64)
        starts_new_group[1:] = (bucket_rank[1:] != bucket_rank[:-1]) | (wide[1:] != wide[:-1]).any(axis=1)
        group_first = np.flatnonzero(starts_new_group)
        siblings_sorted = True

    num_groups = len(group_first)
    group_size = np.diff(np.append(group_first, m))
    group_bucket = bucket_rank[group_first]
    group_order = np.arange(num_groups)
    if not siblings_sorted:
        # Put sibling groups in token order, only inside buckets that split (the others have one group).
        groups_per_bucket = np.bincount(group_bucket, minlength=num_buckets)
        splitting = np.flatnonzero(groups_per_bucket[group_bucket] >= 2)
        if len(splitting):
            sub_order = lexicographic_order(blocks[group_first[splitting]], major_key=group_bucket[splitting])
            group_order[splitting] = splitting[sub_order]

    # Positions: siblings fill their bucket's range in order.
    sizes_sorted = group_size[group_order]
    first_rows = group_first[group_order]
    running = np.zeros(num_groups, dtype=np.int64)
    np.cumsum(sizes_sorted[:-1], out=running[1:])
    is_first_sibling = np.empty(num_groups, dtype=bool)
    is_first_sibling[0] = True
    bucket_sorted = group_bucket[group_order]
    np.not_equal(bucket_sorted[1:], bucket_sorted[:-1], out=is_first_sibling[1:])
    first_sibling_idx = np.maximum.accumulate(np.where(is_first_sibling, np.arange(num_groups), 0))
    group_pos = bucket_start[first_rows] + running - running[first_sibling_idx]

    # LCP between the last prompt of a sibling group and the first of the next one.
    later = np.flatnonzero(~is_first_sibling)
    if len(later):
        rep = blocks[first_rows]
        lcp[group_pos[later]] = depth + common_prefix_len(rep[later - 1], rep[later])

    row_perm = np.arange(m) + np.repeat(first_rows - running, sizes_sorted)
    active = active[row_perm]
    row_pos = np.repeat(group_pos - running, sizes_sorted) + np.arange(m)
    row_full = np.repeat(blocks[first_rows, -1] != PAD, sizes_sorted)
    row_group_size = np.repeat(sizes_sorted, sizes_sorted)

    done = (row_group_size == 1) | ~row_full
    order[row_pos[done]] = active[done]
    # Identical prompts that end in this block: neighbours share the whole prompt.
    dup = ~row_full & (row_group_size > 1)
    dup_not_first = dup & (row_pos != np.repeat(group_pos, sizes_sorted))
    if dup_not_first.any():
        ids = active[dup_not_first]
        lcp[row_pos[dup_not_first]] = limits[ids] - starts[ids]
    keep = ~done
    return active[keep], np.repeat(group_pos, sizes_sorted)[keep]
