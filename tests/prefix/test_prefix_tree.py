import numpy as np
import pytest
from hypothesis import given, settings

from batchllm.prefix import block_hash
from batchllm.prefix.token_arrays import TokenArrays
from batchllm.prefix.tree import build_prefix_tree
from batchllm.prefix.trie_order import trie_order_and_lcp

from helpers_prefix import common_prefix, prompt_sets


def _sort_and_check(prompts):
    ta = TokenArrays.from_lists(prompts)
    order, lcp = trie_order_and_lcp(ta.tokens, ta.offsets[:-1], ta.lengths)
    assert sorted(order.tolist()) == list(range(len(prompts)))
    in_order = [prompts[i] for i in order]
    assert in_order == sorted(prompts)
    expected = [0] + [common_prefix([in_order[j - 1], in_order[j]]) for j in range(1, len(prompts))]
    assert lcp.tolist() == expected[: len(prompts)]


@settings(max_examples=150, deadline=None)
@given(prompt_sets(max_len=90))
def test_trie_order_is_lexicographic_with_exact_neighbour_lcps(prompts):
    _sort_and_check(prompts)


def test_hash_collisions_fall_back_to_exact_sorting(monkeypatch):
    # Every block hashes alike: grouping by hash is wrong everywhere, so each level must sort exactly.
    monkeypatch.setattr("batchllm.prefix.trie_order.hash_rows", lambda blocks: np.zeros(len(blocks), np.uint64))
    rng = np.random.default_rng(3)
    base = rng.integers(0, 4, 50).tolist()
    prompts = [base[: rng.integers(0, 50)] + rng.integers(0, 4, rng.integers(0, 40)).tolist() for _ in range(40)]
    _sort_and_check(prompts)


def test_gather_blocks_pads_past_the_limit():
    tokens = np.arange(40, dtype=np.int32)
    rows = block_hash.gather_blocks(tokens, np.array([0, 30, 38]), np.array([40, 35, 38]))
    assert rows[0].tolist() == list(range(16))
    assert rows[1].tolist() == [30, 31, 32, 33, 34] + [block_hash.PAD] * 11
    assert (rows[2] == block_hash.PAD).all()


@settings(max_examples=100, deadline=None)
@given(prompt_sets(max_len=60))
def test_tree_nodes_are_the_branching_prefixes(prompts):
    tree = build_prefix_tree(TokenArrays.from_lists(prompts))
    n = len(prompts)
    assert tree.node_depth[0] == 0 and tree.node_parent[0] == -1
    assert np.all(tree.node_parent[1:] < np.arange(1, tree.num_nodes)), "pre-order: parents first"
    for v in range(1, tree.num_nodes):
        members = tree.node_members(v).tolist()
        assert len(members) >= 2
        assert common_prefix([prompts[i] for i in members]) == tree.node_depth[v]
        parent = tree.node_parent[v]
        assert tree.node_depth[parent] < tree.node_depth[v]
        assert set(members) <= set(tree.node_members(parent).tolist())
    # Every pair's common prefix is the depth of the deepest node holding both.
    for i in range(n):
        for j in range(i + 1, n):
            holding = [v for v in range(tree.num_nodes) if {i, j} <= set(tree.node_members(v).tolist())]
            assert max(tree.node_depth[v] for v in holding) == common_prefix([prompts[i], prompts[j]])
    # prompt_node is the deepest node containing the prompt.
    for i in range(n):
        v = tree.prompt_node[i]
        assert i in tree.node_members(v)
        children = np.flatnonzero(tree.node_parent == v)
        assert all(i not in tree.node_members(c) for c in children)


def test_token_arrays_validation():
    ta = TokenArrays.from_lists([[1, 2], [], [3]])
    assert ta.offsets.tolist() == [0, 2, 2, 3] and ta.tokens.dtype == np.int32
    assert ta.prompt(0).tolist() == [1, 2] and ta.num_prompts == 3
    with pytest.raises(ValueError, match="token ids must be in"):
        TokenArrays.from_lists([[1, -5]])
    with pytest.raises(ValueError, match="offsets"):
        TokenArrays(np.zeros(3, np.int32), np.array([0, 2], np.int64))
    pair = TokenArrays.from_any((np.array([5, 6, 7], np.int64), np.array([0, 1, 3])))
    assert pair.tokens.dtype == np.int32 and pair.prompt(1).tolist() == [6, 7]
