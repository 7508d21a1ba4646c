"""Assign every prompt to one prefix group so that the saved prefill tokens are maximal.

Model (first-level sharing, as in the BatchLLM paper): a group is a shared prefix P and members whose
prompts start with P; P is prefilled once, so a group saves (members - 1) * |P| tokens. Only nodes of the
prefix tree can be useful prefixes (a group's best P is its members' common prefix), and only "openable"
nodes at that: shared length s(v) (the node depth, cut down to a KV-block boundary when aligning) at least
``min_shared_len`` and longer than the parent's. Choosing the set O of opened nodes decides everything:
each prompt joins its deepest opened ancestor (joining a deeper group never loses), and
value(O) = sum over v in O of s(v) * (members(v) - 1).

DP. phi_v(s) = best value of v's subtree when its not-captured prompts can join an open ancestor group of
shared length s (each such prompt adds s):
    phi_v(s) = max(psi_v, s * direct(v) + sum_c phi_c(s))      # do not open v
    psi_v    = s(v) * (direct(v) - 1) + sum_c phi_c(s(v))        # open v: everything below joins v or deeper
where c ranges over the openable children of v in the contracted tree (only openable nodes) and direct(v)
counts prompts whose deepest openable node is v. phi_c is only ever needed at the shared lengths of c's
openable ancestors, so each node keeps one value per ancestor ("column"); a level of the contracted tree is
one numpy step. Ties go to not opening (fewer, larger groups). Cost: O(sum of contracted depths), which for
real workloads (system prompt -> document -> question) is a few times the number of nodes; a pathological
deep chain is capped by ``max_table_cells`` (deeper nodes are then not offered as groups; ``exact`` says so).

Unlike a "whole subtree or split" rule, this also finds the mixed optimum: a large deep group plus the
remaining siblings merged at a shallower node.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from batchllm.prefix.tree import PrefixTree

DEFAULT_MAX_TABLE_CELLS = 50_000_000


@dataclass(frozen=True, eq=False)
class Grouping:
    """Groups as arrays, in pre-order of their tree nodes (a parent group before its child groups).

    group_node: tree node of each group. group_shared_len: tokens shared by its members.
    group_parent: parent group (multi-level) or -1. request_group: group of each prompt, -1 if ungrouped.
    saved_tokens: prefill tokens the grouping saves. exact: False if the DP had to cap the tree depth.
    """

    group_node: np.ndarray
    group_shared_len: np.ndarray
    group_parent: np.ndarray
    request_group: np.ndarray
    saved_tokens: int
    exact: bool = True


def node_shared_len(tree: PrefixTree, block_size: int, align_to_blocks: bool) -> np.ndarray:
    """The prefix length a group at each node can share: its depth, rounded down to whole KV blocks if asked."""
    if align_to_blocks:
        return (tree.node_depth // block_size) * block_size
    return tree.node_depth.copy()


def openable_nodes(tree: PrefixTree, shared_len: np.ndarray, min_shared_len: int) -> np.ndarray:
    """Boolean mask of nodes that may head a group (see module docstring)."""
    is_openable = shared_len >= max(min_shared_len, 1)
    is_openable[0] = False
    parent_len = shared_len[np.maximum(tree.node_parent, 0)]
    # s is non-decreasing downwards, so "longer than the nearest openable ancestor" == "longer than the parent".
    is_openable &= shared_len > parent_len
    return is_openable


def nearest_marked_ancestor_or_self(parent: np.ndarray, marked: np.ndarray) -> np.ndarray:
    """For each node (pre-order ids), the closest node at or above it with marked True (the root counts as marked)."""
    marked = marked.copy()
    marked[0] = True
    ptr = np.where(marked, np.arange(len(parent)), parent)
    while True:  # pointer jumping: O(log depth) numpy rounds
        nxt = ptr[ptr]
        if np.array_equal(nxt, ptr):
            return ptr
        ptr = nxt


def marked_path_count(cparent: np.ndarray, marked: np.ndarray) -> np.ndarray:
    """Number of marked nodes on the path from the root to each node, itself included (list ranking).

    cparent: nearest marked proper ancestor of each node (0 = the root, which is never counted).
    """
    count = marked.astype(np.int64)
    count[0] = 0
    ptr = np.maximum(cparent, 0)
    # Invariant: count[v] = marked nodes from v (incl.) up to ptr[v] (excl.); ptr[v] == 0: done.
    while True:
        idx = np.flatnonzero(ptr != 0)
        if len(idx) == 0:
            return count
        count[idx] += count[ptr[idx]]
        ptr[idx] = ptr[ptr[idx]]


def _contract(tree: PrefixTree, marked: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(contracted parent of each node, contracted level of each node, deepest marked node of each prompt)."""
    anc = nearest_marked_ancestor_or_self(tree.node_parent, marked)
    cparent = anc[np.maximum(tree.node_parent, 0)]
    cparent[0] = -1
    level = marked_path_count(cparent, marked)
    return cparent, level, anc[tree.prompt_node]


def first_level_grouping(
    tree: PrefixTree,
    shared_len: np.ndarray,
    min_shared_len: int,
    max_table_cells: int = DEFAULT_MAX_TABLE_CELLS,
) -> Grouping:
    """The grouping maximising saved prefill tokens, each prompt in at most one group (see module docstring)."""
    marked = openable_nodes(tree, shared_len, min_shared_len)
    cparent, level, prompt_deepest = _contract(tree, marked)
    exact = True
    cells = int(level[marked].sum())
    if cells > max_table_cells:
        # Deep chains: offer only the shallowest levels as groups so the DP tables fit in memory.
        max_level = _level_cap(level[marked], max_table_cells)
        marked &= level <= max_level
        cparent, level, prompt_deepest = _contract(tree, marked)
        exact = False

    direct = np.bincount(prompt_deepest, minlength=tree.num_nodes).astype(np.int64)
    s = shared_len.astype(np.int64)
    nodes_by_level = _nodes_by_level(marked, level)
    depth_max = len(nodes_by_level) - 1

    # Ancestor shared lengths per node, one column per contracted ancestor (root = column 0, s = 0).
    anc_len: list[np.ndarray] = [np.zeros((0, 0), dtype=np.int64)] * (depth_max + 1)
    local_index = np.full(tree.num_nodes, -1, dtype=np.int64)
    for d in range(1, depth_max + 1):
        nodes = nodes_by_level[d]
        local_index[nodes] = np.arange(len(nodes))
        if d == 1:
            anc_len[d] = np.zeros((len(nodes), 1), dtype=np.int64)
        else:
            parents = cparent[nodes]
            p_local = local_index[parents]
            anc_len[d] = np.hstack([anc_len[d - 1][p_local], s[parents][:, None]])

    # Bottom-up: phi per node and column; remember where opening beats not opening.
    open_if: list[np.ndarray] = [np.zeros((0, 0), dtype=bool)] * (depth_max + 1)
    child_phi = None  # phi of level d + 1, with its parents' local indices
    root_value = 0
    for d in range(depth_max, 0, -1):
        nodes = nodes_by_level[d]
        child_sum = np.zeros((len(nodes), d + 1), dtype=np.int64)
        if child_phi is not None:
            phi_c, parent_local = child_phi
            _add_rows_by_sorted_key(child_sum, phi_c, parent_local)
        unopened = anc_len[d] * direct[nodes][:, None] + child_sum[:, :d]
        psi = s[nodes] * (direct[nodes] - 1) + child_sum[:, d]
        open_if[d] = psi[:, None] > unopened
        phi = np.maximum(psi[:, None], unopened)
        child_phi = (phi, local_index[cparent[nodes]] if d > 1 else np.zeros(len(nodes), dtype=np.int64))
        if d == 1:
            # Column 0 is "no open ancestor": prompts left there stay ungrouped and add nothing.
            root_value = int(phi[:, 0].sum())

    # Top-down: the open ancestor column of each node decides whether it opens.
    group_of_node = np.zeros(tree.num_nodes, dtype=np.int64)  # 0 = root = ungrouped
    column = np.zeros(tree.num_nodes, dtype=np.int64)
    is_open = np.zeros(tree.num_nodes, dtype=bool)
    for d in range(1, depth_max + 1):
        nodes = nodes_by_level[d]
        parents = np.maximum(cparent[nodes], 0)
        if d == 1:
            col = np.zeros(len(nodes), dtype=np.int64)
        else:  # the parent's own column is d - 1
            col = np.where(is_open[parents], d - 1, column[parents])
        opened = open_if[d][np.arange(len(nodes)), col]
        is_open[nodes] = opened
        column[nodes] = col
        group_of_node[nodes] = np.where(opened, nodes, group_of_node[parents])
    grouping = _grouping_from_owner(tree, s, is_open, group_of_node[prompt_deepest], parent_of_group=None, exact=exact)
    if grouping.saved_tokens != root_value:  # the DP value and the recount must agree
        raise AssertionError(f"prefix DP value {root_value} != recount {grouping.saved_tokens}")
    return grouping


def multi_level_grouping(tree: PrefixTree, shared_len: np.ndarray, min_shared_len: int) -> Grouping:
    """Nested groups: every openable node whose prefix extends its nearest chosen ancestor's by at least
    ``min_shared_len`` tokens becomes a group whose KV is stored once; each prompt belongs to its deepest group.

    Saved tokens = sum over groups of (prompts in its subtree - 1) * (its length - parent group's length).
    (Adding a level never loses tokens; the threshold keeps each level worth a separate prefix pass.)
    """
    marked = openable_nodes(tree, shared_len, min_shared_len)
    cparent, level, _ = _contract(tree, marked)
    s = shared_len.astype(np.int64)
    nodes_by_level = _nodes_by_level(marked, level)
    chosen = np.zeros(tree.num_nodes, dtype=bool)
    base = np.zeros(tree.num_nodes, dtype=np.int64)  # shared length of the nearest chosen ancestor-or-self
    owner = np.zeros(tree.num_nodes, dtype=np.int64)
    for d in range(1, len(nodes_by_level)):
        nodes = nodes_by_level[d]
        parents = np.maximum(cparent[nodes], 0)
        take = s[nodes] - base[parents] >= max(min_shared_len, 1)
        chosen[nodes] = take
        base[nodes] = np.where(take, s[nodes], base[parents])
        owner[nodes] = np.where(take, nodes, owner[parents])
    deepest = nearest_marked_ancestor_or_self(tree.node_parent, chosen)
    group_parent_node = deepest[np.maximum(tree.node_parent, 0)]
    return _grouping_from_owner(tree, s, chosen, deepest[tree.prompt_node], parent_of_group=group_parent_node, exact=True)


def _grouping_from_owner(
    tree: PrefixTree,
    s: np.ndarray,
    is_group: np.ndarray,
    prompt_owner: np.ndarray,
    parent_of_group: np.ndarray | None,
    exact: bool,
) -> Grouping:
    group_node = np.flatnonzero(is_group)
    group_index = np.full(tree.num_nodes, -1, dtype=np.int64)
    group_index[group_node] = np.arange(len(group_node))
    request_group = group_index[prompt_owner]  # the root (ungrouped) maps to -1
    group_len = s[group_node]
    if parent_of_group is None:
        group_parent = np.full(len(group_node), -1, dtype=np.int64)
        members = np.bincount(request_group[request_group >= 0], minlength=len(group_node))
        saved = int(((members - 1) * group_len).sum())
    else:
        group_parent = group_index[parent_of_group[group_node]]
        parent_len = np.where(group_parent >= 0, group_len[np.maximum(group_parent, 0)], 0)
        saved = int(((tree.node_count[group_node] - 1) * (group_len - parent_len)).sum())
    return Grouping(
        group_node=group_node,
        group_shared_len=group_len,
        group_parent=group_parent,
        request_group=request_group,
        saved_tokens=saved,
        exact=exact,
    )


def _nodes_by_level(marked: np.ndarray, level: np.ndarray) -> list[np.ndarray]:
    nodes = np.flatnonzero(marked)
    if len(nodes) == 0:
        return [nodes]
    lv = level[nodes]
    by = np.argsort(lv, kind="stable")  # stable: keeps pre-order inside a level (siblings contiguous)
    nodes, lv = nodes[by], lv[by]
    bounds = np.searchsorted(lv, np.arange(int(lv[-1]) + 2))
    return [nodes[bounds[d] : bounds[d + 1]] for d in range(int(lv[-1]) + 1)]


def _add_rows_by_sorted_key(out: np.ndarray, rows: np.ndarray, keys: np.ndarray) -> None:
    """out[keys[i]] += rows[i] for non-decreasing keys."""
    if len(keys) == 0:
        return
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    out[keys[starts]] += np.add.reduceat(rows, starts, axis=0)[:, : out.shape[1]]


def _level_cap(levels: np.ndarray, max_cells: int) -> int:
    counts = np.bincount(levels)
    cells = np.cumsum(counts * np.arange(len(counts)))
    return max(1, int(np.searchsorted(cells, max_cells, side="right")) - 1)
