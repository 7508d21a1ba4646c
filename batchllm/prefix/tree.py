"""The compact prefix (radix) tree of a set of prompts, as flat numpy arrays.

Built from the lexicographic order and neighbour LCPs (trie_order.py) as the classical LCP-interval tree:
an internal node is a maximal range of sorted positions whose prompts share ``depth`` tokens and that
more than one prompt passes through. Leaves (single prompts) are not materialised: each prompt points at
its deepest node (``prompt_node``), i.e. where it branches off or ends.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from batchllm.prefix.token_arrays import TokenArrays
from batchllm.prefix.trie_order import trie_order_and_lcp


@dataclass(frozen=True, eq=False)
class PrefixTree:
    """Nodes are numbered in pre-order (a parent before its children; node 0 is the root, depth 0).

    node_depth: shared prefix length (tokens) of the node's prompts.
    node_parent: parent node id (-1 for the root).
    node_begin, node_end: the node's prompts are ``order[node_begin:node_end]`` (at least 2, except a
        root over fewer than 2 prompts).
    order: prompt ids in lexicographic order; lcp[j] = LCP(order[j - 1], order[j]) (lcp[0] = 0).
    prompt_node: deepest node containing each prompt.
    lengths: the prompt lengths the tree was built over.
    """

    node_depth: np.ndarray
    node_parent: np.ndarray
    node_begin: np.ndarray
    node_end: np.ndarray
    order: np.ndarray
    lcp: np.ndarray
    prompt_node: np.ndarray
    lengths: np.ndarray

    @property
    def num_nodes(self) -> int:
        return len(self.node_depth)

    @property
    def node_count(self) -> np.ndarray:
        """How many prompts pass through each node."""
        return self.node_end - self.node_begin

    def node_members(self, node: int) -> np.ndarray:
        return np.sort(self.order[self.node_begin[node] : self.node_end[node]])

    def shared_token_total(self) -> int:
        """Tokens saved if every node's edge were computed once (unlimited levels): the trie's ideal."""
        if self.num_nodes <= 1:
            return 0
        child = np.arange(1, self.num_nodes)
        edge = self.node_depth[child] - self.node_depth[self.node_parent[child]]
        return int(((self.node_count[child] - 1) * edge).sum())


def build_prefix_tree(prompts: TokenArrays, lengths: np.ndarray | None = None) -> PrefixTree:
    """The prefix tree over ``prompts`` (optionally truncated to ``lengths``, each <= the prompt's length)."""
    if lengths is None:
        lengths = prompts.lengths
    order, lcp = trie_order_and_lcp(prompts.tokens, prompts.offsets[:-1], lengths)
    return tree_from_lcp(order, lcp, np.asarray(lengths, dtype=np.int64))


def tree_from_lcp(order: np.ndarray, lcp: np.ndarray, lengths: np.ndarray) -> PrefixTree:
    """Build the LCP-interval tree with one stack pass over the n - 1 neighbour LCPs (O(n))."""
    n = len(order)
    depth = [0]
    parent = [-1]
    begin = [0]
    end = [n]
    stack = [0]
    top_after = [0] * (n + 1)
    lcp_list = lcp.tolist()
    lcp_list.append(0)  # sentinel closes every open interval but the root
    for i in range(1, n + 1):
        value = lcp_list[i]
        left = i - 1
        last_closed = -1
        while value < depth[stack[-1]]:
            last_closed = stack.pop()
            end[last_closed] = i
            left = begin[last_closed]
        if value > depth[stack[-1]]:
            node = len(depth)
            depth.append(value)
            parent.append(stack[-1])
            begin.append(left)
            end.append(-1)
            if last_closed >= 0:
                parent[last_closed] = node  # the interval just closed nests in the one opening here
            stack.append(node)
        top_after[i] = stack[-1]

    depth_a = np.asarray(depth, dtype=np.int64)
    parent_a = np.asarray(parent, dtype=np.int64)
    begin_a = np.asarray(begin, dtype=np.int64)
    end_a = np.asarray(end, dtype=np.int64)
    top = np.asarray(top_after, dtype=np.int64)
    # The deepest interval holding position j is the deeper of the ones opened at its two boundaries.
    lcp_right = np.append(lcp[1:], 0) if n else lcp
    owner = np.where(lcp >= lcp_right, top[:n], top[1 : n + 1])

    # Relabel in pre-order: by start position, outer (shallower) intervals first.
    pre = np.lexsort((depth_a, begin_a))
    new_id = np.empty_like(pre)
    new_id[pre] = np.arange(len(pre))
    parent_pre = parent_a[pre]
    parent_pre = np.where(parent_pre >= 0, new_id[np.maximum(parent_pre, 0)], -1)
    prompt_node = np.empty(n, dtype=np.int64)
    prompt_node[order] = new_id[owner]
    return PrefixTree(
        node_depth=depth_a[pre],
        node_parent=parent_pre,
        node_begin=begin_a[pre],
        node_end=end_a[pre],
        order=order,
        lcp=lcp,
        prompt_node=prompt_node,
        lengths=lengths,
    )
