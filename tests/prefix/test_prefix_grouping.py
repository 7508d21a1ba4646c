import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batchllm.prefix import analyze_prefixes
from batchllm.prefix.grouping import node_shared_len, openable_nodes

from helpers_prefix import brute_force_best, prompt_sets

modes = st.sampled_from(
    [
        dict(block_size=1, align_to_blocks=True, min_shared_len=1),
        dict(block_size=4, align_to_blocks=True, min_shared_len=4),
        dict(block_size=4, align_to_blocks=False, min_shared_len=3),
        dict(block_size=2, align_to_blocks=True, min_shared_len=6),
        dict(block_size=16, align_to_blocks=True, min_shared_len=None),
    ]
)


def check_invariants(prompts, analysis, block_size, align_to_blocks, min_shared_len, multi_level):
    n = len(prompts)
    min_shared = block_size if min_shared_len is None else min_shared_len
    all_members = np.concatenate([g.member_ids for g in analysis.groups]) if analysis.groups else np.array([])
    assert sorted(all_members.tolist()) == list(range(n)), "every request in exactly one group"
    assert [g.group_id for g in analysis.groups] == list(range(len(analysis.groups)))
    for g in analysis.groups:
        assert np.all(analysis.request_group[g.member_ids] == g.group_id)
        assert np.all(np.diff(g.member_ids) > 0)
        if g.is_ungrouped:
            assert g.group_id == len(analysis.groups) - 1, "the ungrouped group is last"
            continue
        s = g.shared_prefix_len
        assert s >= max(min_shared, 1)
        if align_to_blocks:
            assert s % block_size == 0
        # Subtree members (multi-level: requests of descendant groups also use this prefix).
        users = _subtree_members(analysis, g.group_id)
        assert analysis.requests_using(g.group_id).tolist() == users
        assert len(users) >= 2
        head = prompts[users[0]][:s]
        for i in users:
            assert len(prompts[i]) > s, "every member keeps its last token"
            assert prompts[i][:s] == head, "the shared prefix is a prefix of every member"
        if multi_level:
            if g.parent_group_id is not None:
                parent = analysis.groups[g.parent_group_id]
                assert parent.group_id < g.group_id
                assert s - parent.shared_prefix_len >= max(min_shared, 1)
        else:
            assert g.parent_group_id is None
    # Saved tokens: the stats, the analysis recount and a direct recount agree.
    direct = 0
    for g in analysis.groups:
        if g.is_ungrouped:
            continue
        parent_len = analysis.groups[g.parent_group_id].shared_prefix_len if g.parent_group_id is not None else 0
        direct += (len(_subtree_members(analysis, g.group_id)) - 1) * (g.shared_prefix_len - parent_len)
    stats = analysis.stats
    assert stats.saved_tokens == direct == analysis.saved_tokens_recount()
    assert stats.prompt_tokens == sum(map(len, prompts))
    assert stats.prefill_tokens == stats.prompt_tokens - stats.saved_tokens
    assert stats.saved_tokens <= stats.trie_saved_tokens
    assert stats.grouped_prompts + stats.ungrouped_prompts == n


def _subtree_members(analysis, group_id):
    ids = set(analysis.groups[group_id].member_ids.tolist())
    for g in analysis.groups[group_id + 1 :]:
        p = g.parent_group_id
        while p is not None and p != group_id:
            p = analysis.groups[p].parent_group_id
        if p == group_id:
            ids |= set(g.member_ids.tolist())
    return sorted(ids)


@settings(max_examples=120, deadline=None)
@given(prompt_sets(), modes, st.booleans())
def test_grouping_invariants(prompts, mode, multi_level):
    analysis = analyze_prefixes(prompts, multi_level=multi_level, **mode)
    check_invariants(prompts, analysis, multi_level=multi_level, **mode)


@settings(max_examples=120, deadline=None)
@given(prompt_sets(max_prompts=6, max_len=24, alphabet=2), modes)
def test_dp_equals_brute_force_over_all_partitions(prompts, mode):
    analysis = analyze_prefixes(prompts, **mode)
    min_shared = mode["block_size"] if mode["min_shared_len"] is None else mode["min_shared_len"]
    best = brute_force_best(prompts, mode["block_size"], mode["align_to_blocks"], min_shared)
    assert analysis.stats.saved_tokens == best


def _canonical(prompts, analysis):
    return sorted(
        (g.shared_prefix_len, sorted(tuple(prompts[i]) for i in g.member_ids),
         None if g.parent_group_id is None else analysis.groups[g.parent_group_id].shared_prefix_len)
        for g in analysis.groups
    )


@settings(max_examples=80, deadline=None)
@given(prompt_sets(), modes, st.booleans(), st.randoms(use_true_random=False))
def test_input_order_does_not_change_the_result(prompts, mode, multi_level, rnd):
    shuffled = list(prompts)
    rnd.shuffle(shuffled)
    a = analyze_prefixes(prompts, multi_level=multi_level, **mode)
    b = analyze_prefixes(shuffled, multi_level=multi_level, **mode)
    assert a.stats == b.stats
    assert _canonical(prompts, a) == _canonical(shuffled, b)


def _doc_tree_workload(seed=0):
    """System prompt -> documents -> questions: one popular long document, many short two-question ones."""
    rng = random.Random(seed)
    tok = lambda k: [rng.randrange(1000) for _ in range(k)]  # noqa: E731
    system = tok(1024)
    prompts = []
    popular = tok(1024)
    prompts += [system + popular + tok(32) for _ in range(10)]
    for _ in range(10):
        doc = tok(64)
        prompts += [system + doc + tok(32) for _ in range(2)]
    return prompts


def test_dp_beats_deepest_split_and_root_merge_on_a_multi_level_tree():
    prompts = _doc_tree_workload()
    analysis = analyze_prefixes(prompts, block_size=16)
    tree = analysis.tree
    s = node_shared_len(tree, 16, True)
    openable = openable_nodes(tree, s, 16)
    nodes = np.flatnonzero(openable)

    def value(opened):
        owner = np.zeros(len(prompts), dtype=np.int64)
        depth = np.full(len(prompts), -1)
        for v in opened:
            for i in tree.node_members(v):
                if tree.node_depth[v] > depth[i]:
                    owner[i], depth[i] = v, tree.node_depth[v]
        counts = {v: int((owner == v).sum()) for v in opened}
        return sum((counts[v] - 1) * s[v] for v in opened if counts[v] > 0)

    deepest_split = value(nodes)  # every openable node gets a group: each request in its deepest
    root_merge = value([v for v in nodes if tree.node_parent[v] == 0 or not openable[tree.node_parent[v]]
                        and _no_openable_ancestor(tree, openable, v)])
    dp = analysis.stats.saved_tokens
    assert dp == analysis.saved_tokens_recount()
    # DP: the popular document deep (9 * 2048), everything else merged on the system prompt (19 * 1024).
    assert dp == 9 * 2048 + 19 * 1024
    assert deepest_split == 9 * 2048 + 10 * (1024 + 64)
    assert root_merge == 29 * 1024
    assert dp > deepest_split and dp > root_merge
    # Multi-level sharing stores every level once and saves even more.
    multi = analyze_prefixes(prompts, block_size=16, multi_level=True)
    assert multi.stats.saved_tokens == 29 * 1024 + 9 * 1024 + 10 * 1 * 64
    assert multi.stats.saved_tokens > dp
    roots = [g for g in multi.groups if g.parent_group_id is None and not g.is_ungrouped]
    assert len(roots) == 1 and roots[0].shared_prefix_len == 1024
    assert all(g.parent_group_id == roots[0].group_id for g in multi.groups if g is not roots[0])


def _no_openable_ancestor(tree, openable, v):
    p = tree.node_parent[v]
    while p > 0:
        if openable[p]:
            return False
        p = tree.node_parent[p]
    return True


def test_min_shared_len_keeps_short_prefixes_ungrouped():
    prompts = [[1] * 10 + [i] * 5 for i in range(4)]
    assert analyze_prefixes(prompts, block_size=1, min_shared_len=11).stats.groups == 0
    a = analyze_prefixes(prompts, block_size=1, min_shared_len=10)
    assert a.stats.groups == 1 and a.groups[0].shared_prefix_len == 10
    # Block alignment: 10 shared tokens are 2 whole blocks of 4.
    b = analyze_prefixes(prompts, block_size=4, min_shared_len=4)
    assert b.groups[0].shared_prefix_len == 8 and b.stats.aligned_to_blocks


def test_identical_prompts_share_all_but_their_last_token():
    prompts = [[7] * 33] * 3 + [[7] * 20 + [1]]
    a = analyze_prefixes(prompts, block_size=16)
    (group, *rest) = a.groups
    assert group.shared_prefix_len == 32 and group.member_ids.tolist() == [0, 1, 2]
    a1 = analyze_prefixes(prompts, block_size=1, min_shared_len=1)
    assert a1.stats.saved_tokens == 2 * 32  # three sharing 32 beats four sharing 20 (3 * 20)
    assert a1.stats.trie_saved_tokens == 2 * 32 + 3 * 20 - 2 * 20


def test_deep_chains_are_capped_but_stay_valid():
    prompts = [[5] * k for k in range(2, 60)]  # nested prompts: a chain 58 levels deep
    exact = analyze_prefixes(prompts, block_size=1, min_shared_len=1)
    capped = analyze_prefixes(prompts, block_size=1, min_shared_len=1, max_table_cells=100)
    assert exact.stats.exact and not capped.stats.exact
    assert 0 < capped.stats.saved_tokens <= exact.stats.saved_tokens
    check_invariants(prompts, capped, block_size=1, align_to_blocks=True, min_shared_len=1, multi_level=False)


def test_empty_and_tiny_inputs():
    assert analyze_prefixes([]).groups == () and analyze_prefixes([]).stats.reuse_ratio == 0.0
    a = analyze_prefixes([[], [1], [1]])
    assert len(a.groups) == 1 and a.groups[0].is_ungrouped and a.stats.saved_tokens == 0


def test_bad_arguments():
    with pytest.raises(ValueError):
        analyze_prefixes([[1]], block_size=0)
    with pytest.raises(ValueError):
        analyze_prefixes([[1]], min_shared_len=-1)
