"""Block accounting: no leak, no double free, shared blocks freed exactly when their last holder lets go."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batchllm.kv_cache.block_pool import BlockPool
from batchllm.kv_cache.block_table import kv_blocks_needed

ops = st.lists(
    st.one_of(
        st.tuples(st.just("alloc"), st.integers(0, 6)),
        st.tuples(st.just("share"), st.integers(0, 50)),
        st.tuples(st.just("release"), st.integers(0, 50)),
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(num_blocks=st.integers(1, 24), operations=ops)
def test_random_holders_never_leak_or_double_free(num_blocks, operations):
    pool = BlockPool(num_blocks)
    holders: list[list[int]] = []  # each holder owns one reference to each of its blocks
    for op, arg in operations:
        if op == "alloc":
            if arg <= pool.num_free:
                holders.append(pool.allocate(arg))
            else:
                with pytest.raises(RuntimeError):
                    pool.allocate(arg)
        elif op == "share" and holders:
            blocks = holders[arg % len(holders)]
            pool.share(blocks)
            holders.append(list(blocks))
        elif op == "release" and holders:
            blocks = holders.pop(arg % len(holders))
            pool.release(blocks)
            still_held = {b for h in holders for b in h}
            for b in blocks:
                assert (pool.ref_count(b) == 0) == (b not in still_held)
        counts: dict[int, int] = {}
        for h in holders:
            for b in h:
                counts[b] = counts.get(b, 0) + 1
        assert all(pool.ref_count(b) == c for b, c in counts.items())
        assert pool.num_used == len(counts)
    for h in holders:
        pool.release(h)
    assert pool.num_free == num_blocks


def test_double_free_and_sharing_free_block_raise():
    pool = BlockPool(4)
    blocks = pool.allocate(2)
    pool.release(blocks)
    with pytest.raises(RuntimeError, match="double free"):
        pool.release(blocks[:1])
    with pytest.raises(RuntimeError, match="sharing a free block"):
        pool.share(blocks)


@given(st.integers(0, 10_000), st.sampled_from([1, 2, 4, 16, 64]))
def test_kv_blocks_needed_is_ceiling(tokens, block_size):
    n = kv_blocks_needed(tokens, block_size)
    assert n * block_size >= tokens and (n - 1) * block_size < max(tokens, 1)
