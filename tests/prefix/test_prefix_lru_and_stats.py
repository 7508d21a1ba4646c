import sys
from pathlib import Path

import numpy as np
import pytest

from batchllm.prefix import TokenArrays, analyze_prefixes, simulate_lru_prefix_cache
from batchllm.prefix.stats import size_histogram

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from bench_prefix import make_micro_workload  # noqa: E402


def test_lru_hits_need_leading_full_blocks_and_keep_the_last_token():
    a = [1] * 40
    b = [1] * 32  # both full blocks of b are cached by a, but b must compute its last token itself
    c = [1] * 16 + [2] * 16 + [1] * 8  # first block hits, second misses
    d = [2] * 16 + [1] * 16 + [3]  # first block misses: the cached second block must not count
    r = simulate_lru_prefix_cache(TokenArrays.from_lists([a, b, c, d]), cache_blocks=100, block_size=16)
    assert r.hit_tokens == 16 + 16
    assert r.reuse_ratio == pytest.approx(32 / (40 + 32 + 40 + 33))


def test_lru_capacity_zero_and_eviction_order():
    p = [[1] * 48 + [9], [2] * 48 + [9], [1] * 48 + [9]]
    ta = TokenArrays.from_lists(p)
    assert simulate_lru_prefix_cache(ta, 0).hit_tokens == 0
    # Capacity 4: inserting p[1] (3 blocks) evicts p[0]'s tail blocks first, keeping its first block.
    assert simulate_lru_prefix_cache(ta, 4).hit_tokens == 16
    assert simulate_lru_prefix_cache(ta, 6).hit_tokens == 48


def test_micro_workload_ideal_vs_lru():
    """Paper micro workload: shared/distinct 2000/200, sharing degree 16, requests interleaved."""
    prompts = make_micro_workload(num_groups=32, degree=16, shared=2000, distinct=200, seed=1)
    working_set_blocks = 32 * (2000 // 16)
    a = analyze_prefixes(prompts, block_size=16, lru_cache_blocks=working_set_blocks // 4)
    ideal = 15 * 2000 / (16 * 2200)
    # 2000 is a multiple of 16: block alignment costs nothing here, and the DP finds the ideal.
    assert a.stats.reuse_ratio == pytest.approx(ideal)
    assert a.stats.trie_reuse_ratio == pytest.approx(ideal)
    assert a.stats.groups == 32 and a.stats.group_size.min == a.stats.group_size.max == 16
    assert a.stats.lru_reuse_ratio < 0.5 * ideal
    # A cache larger than the working set gets (almost) everything in this order too.
    big = analyze_prefixes(prompts, lru_cache_blocks=10 * working_set_blocks).stats.lru_reuse_ratio
    assert big == pytest.approx(ideal, abs=0.02)


def test_stats_fields():
    prompts = [[1] * 40 + [i] for i in range(5)] + [[9, 9]]
    s = analyze_prefixes(prompts, block_size=16).stats
    assert (s.prompts, s.prompt_tokens, s.groups, s.grouped_prompts, s.ungrouped_prompts) == (6, 207, 1, 5, 1)
    assert s.saved_tokens == 4 * 32 and s.prefill_tokens == 207 - 128
    assert s.reuse_ratio == pytest.approx(128 / 207)
    assert s.shared_prefix_len.max == 32 and s.group_size_histogram == {"5-8": 1}
    assert s.lru_reuse_ratio is None
    d = s.to_dict()
    assert d["group_size"]["mean"] == 5.0 and d["aligned_to_blocks"] is True


def test_size_histogram_buckets():
    assert size_histogram(np.array([2, 2, 3, 4, 5, 16, 17])) == {"2": 2, "3-4": 2, "5-8": 1, "9-16": 1, "17-32": 1}
