"""Data parallelism: cut a batch into work units of whole prefix groups for N engine replicas.

The driver hands the units out largest first, each to the replica that asks for more work first (greedy list
scheduling, LPT). Whole groups mean every shared prefix is computed by one replica only; enough small units
even out the replicas' finishing times.

How the planner decides
-----------------------
Costs are estimates in prefill tokens. A request's own cost is its prompt minus the shared prefix of its
group (0 for an ungrouped request) plus ``DECODE_TOKEN_COST`` x min(output budget, ``MAX_EXPECTED_OUTPUT``).
A group's prefix cost is its shared prefix minus its parent's; a unit pays it once if it holds any request
that uses that prefix (a member of the group or of a descendant group).

1. Items. Each root sharing group together with all its descendant groups (multi-level sharing) is one item;
   each ungrouped request (its group has shared_prefix_len 0) is an item of its own. An item's cost is its
   requests' own costs plus the prefix costs of its groups.
2. Units. The target unit cost is C = total_cost / (num_replicas x units_per_replica). Items of cost <= C
   are packed, in the order of their smallest request id (input order), into units of cost <= C: a new
   unit starts when the next item would take the current one past C. An item costing more than C is a unit
   of its own.
3. Balance. Simulate the dispatch: units by cost descending (ties: smallest request id first), each to the
   replica that becomes free first (ties: lowest replica index). While the makespan exceeds
   (1 + tolerance) x max(total_cost / N, largest atom) -- an atom is one request with all its groups'
   prefixes, which no split can go below -- split the largest unit that holds a single item (or a part of
   one) with >= 2 requests in two: its requests in ascending (deepest group id, request id) order, cut where
   the larger part is cheapest (the cost midpoint). Each part pays the prefix of every group it touches;
   that duplicated prefix is the price, reported as ``extra_prefix_tokens``. Re-sort, re-simulate. Stop
   when within tolerance, when nothing can be split, or after ``max_splits`` splits (a guard against
   pathological inputs; default 8 x N x units_per_replica). With one replica nothing is ever split.

Unit ids are dense, 0..U-1 in dispatch order. With groups in pre-order (as ``analyze_prefixes`` makes them)
sorting by group id keeps every subtree contiguous, so a cut duplicates few prefixes; any order is correct.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass
from typing import Any, NamedTuple, Optional, Sequence, Union

import numpy as np

from batchllm.prefix import PrefixAnalysis, TokenArrays, analyze_prefixes, repeat_prompts

Ints = Union[Sequence[int], np.ndarray]
Dispatch = tuple[float, tuple[float, ...], tuple[tuple[int, ...], ...]]  # makespan, replica costs and units

# On one H200 with llama-3.1-8b bf16 our engine decodes ~12k tok/s at batch 256 (256 x 2000 tokens in 43 s)
# and prefills ~30k tok/s, so a decode token costs ~2.5 prefill tokens. Only the order and balance of the
# units depend on it, never which requests share a prefix.
DECODE_TOKEN_COST = 2.5
# Budgets can be the whole context when max_tokens is unset; most requests stop far earlier.
MAX_EXPECTED_OUTPUT = 1024


@dataclass(frozen=True, eq=False)
class WorkUnit:
    """Requests one replica runs together.

    request_ids: int64, ascending, read-only. cost: estimated (members' own costs + each touched group's
    prefix cost once). group_ids: the sharing groups it touches, ascending. split_part: (k, parts), k in
    0..parts-1 in (deepest group id, request id) order, when the unit is a part of a split item; else None.
    """

    unit_id: int
    request_ids: np.ndarray
    cost: float
    group_ids: tuple[int, ...]
    split_part: Optional[tuple[int, int]] = None

    @property
    def num_requests(self) -> int:
        return len(self.request_ids)


@dataclass(frozen=True, eq=False)
class WorkPlan:
    """The units in dispatch order (cost descending, ties by unit_id) and the simulated dispatch.

    split_groups: root group id -> number of parts. total_cost: after splits; unsplit_cost: before.
    target_unit_cost: C of rule 2. replica_costs, replica_units: the simulated dispatch of ``units``.
    lower_bound: max(total_cost / N, largest unit cost). extra_prefix_tokens: prefix tokens computed more
    than once because of splits (= total_cost - unsplit_cost).
    """

    units: tuple[WorkUnit, ...]
    num_replicas: int
    split_groups: dict[int, int]
    total_cost: float
    unsplit_cost: float
    target_unit_cost: float
    replica_costs: tuple[float, ...]
    replica_units: tuple[tuple[int, ...], ...]
    makespan: float
    lower_bound: float
    extra_prefix_tokens: int

    @property
    def imbalance(self) -> float:
        """makespan / (total_cost / N): 1.0 is a perfect balance."""
        mean = self.total_cost / self.num_replicas
        return self.makespan / mean if mean > 0 else 1.0

    @property
    def num_units(self) -> int:
        return len(self.units)

    def unit_of_request(self, num_requests: int) -> np.ndarray:
        """unit_id of each request (int64)."""
        out = np.full(num_requests, -1, dtype=np.int64)
        for unit in self.units:
            out[unit.request_ids] = unit.unit_id
        return out

    def summary(self) -> dict[str, Any]:
        """JSON-ready numbers for the job's log and report."""
        keys = ("num_replicas", "num_units", "total_cost", "unsplit_cost", "makespan", "lower_bound", "imbalance",
                "extra_prefix_tokens")
        return {**{k: getattr(self, k) for k in keys}, "split_groups": len(self.split_groups)}


def simulate_dispatch(unit_costs: Sequence[float], num_replicas: int) -> Dispatch:
    """Units in the given order, each to the replica that becomes free first (ties: lowest replica index).

    Returns (makespan, replica_costs, replica_units) with unit indices into ``unit_costs``.
    """
    if num_replicas < 1:
        raise ValueError(f"num_replicas={num_replicas} must be >= 1")
    heap = [(0.0, r) for r in range(num_replicas)]
    loads = [0.0] * num_replicas
    units: list[list[int]] = [[] for _ in range(num_replicas)]
    for u, cost in enumerate(unit_costs):
        load, r = heap[0]
        loads[r] = load + float(cost)
        units[r].append(u)
        heapq.heapreplace(heap, (loads[r], r))
    return max(loads), tuple(loads), tuple(tuple(x) for x in units)


def expected_costs(
    prompt_lens: Ints, output_budgets: Ints, request_group: Ints, group_shared_len: Ints, group_parent: Ints,
    decode_token_cost: float = DECODE_TOKEN_COST,
) -> tuple[np.ndarray, np.ndarray]:
    """(request_cost, group_prefix_cost), float64: each request's own cost and each group's prefix cost.

    group_parent: parent group id, -1 for none. A group with shared length 0 is ungrouped (prefix cost 0).
    A negative budget counts as 0.
    """
    *arrays, _root = _checked(prompt_lens, output_budgets, request_group, group_shared_len, group_parent)
    return _costs(*arrays, decode_token_cost)


def plan_work_units(
    prompt_lens: Ints, output_budgets: Ints, request_group: Ints, group_shared_len: Ints, group_parent: Ints,
    num_replicas: int, *, units_per_replica: int = 16, tolerance: float = 0.1,
    decode_token_cost: float = DECODE_TOKEN_COST, max_splits: Optional[int] = None,
) -> WorkPlan:
    """Work units for ``num_replicas`` replicas by the rule of this module's docstring.

    request_group: each request's (deepest) group id. group_shared_len: each group's full shared prefix
    (0 marks the ungrouped group: its members are independent singletons). group_parent: -1 for none.
    """
    if num_replicas < 1 or units_per_replica < 1 or not tolerance >= 0:
        raise ValueError(f"need num_replicas={num_replicas} >= 1, units_per_replica={units_per_replica} >= 1 "
                         f"and tolerance={tolerance} >= 0")
    lens, budgets, group, shared, parent, root = _checked(prompt_lens, output_budgets, request_group,
                                                          group_shared_len, group_parent)
    own, prefix_cost = _costs(lens, budgets, group, shared, parent, decode_token_cost)
    n, num_groups = len(group), len(shared)
    deep = np.where(shared[group] > 0, group, -1)  # deepest sharing group, -1 when ungrouped
    chain_req, chain_group = _chains(deep, parent)

    # Rule 1: items. Key = root group id, or num_groups + request id for an ungrouped request.
    item_key = np.where(deep >= 0, root[np.maximum(deep, 0)], num_groups + np.arange(n, dtype=np.int64))
    keys, item_first, item_of = np.unique(item_key, return_index=True, return_inverse=True)
    num_items = len(keys)
    touched = np.flatnonzero(np.bincount(chain_group, minlength=num_groups))  # groups some request uses
    item_of_root = np.full(num_groups, -1, dtype=np.int64)
    item_of_root[keys[keys < num_groups]] = np.flatnonzero(keys < num_groups)
    item_prefix = np.bincount(item_of_root[root[touched]], prefix_cost[touched], minlength=num_items)
    item_cost = np.bincount(item_of, own, minlength=num_items) + item_prefix
    unsplit = math.fsum(item_cost.tolist())
    target = unsplit / (num_replicas * units_per_replica)

    # Rule 2: units.
    unit_of_item = _pack(item_cost, item_first, target)
    num_units = int(unit_of_item.max()) + 1 if num_items else 0
    items_in_unit = np.bincount(unit_of_item, minlength=num_units)
    sole_item = np.full(num_units, -1, dtype=np.int64)
    sole_item[unit_of_item] = np.arange(num_items)
    unit_root = np.where((items_in_unit == 1) & (keys[sole_item] < num_groups), keys[sole_item], -1)
    unit_cost = np.bincount(unit_of_item, item_cost, minlength=num_units)
    unit_of_req = unit_of_item[item_of]
    parts = [_Part(reqs, float(c), int(r), None, None)
             for reqs, c, r in zip(_by_unit(unit_of_req, num_units), unit_cost.tolist(), unit_root.tolist())]

    # Rule 3: balance.
    atom = float((own + shared[group]).max()) if n else 0.0  # a request with all its groups' prefixes
    limit = 8 * num_replicas * units_per_replica if max_splits is None else max_splits
    splits = 0
    while True:
        parts.sort(key=lambda p: (-p.cost, int(p.requests[0])))  # dispatch order; a unit is never empty
        if num_replicas == 1:
            break
        costs = [p.cost for p in parts]
        makespan = simulate_dispatch(costs, num_replicas)[0]
        if makespan <= (1 + tolerance) * max(math.fsum(costs) / num_replicas, atom) or splits >= limit:
            break
        i = next((i for i, p in enumerate(parts) if p.root >= 0 and len(p.requests) >= 2), None)
        if i is None:
            break
        parts[i : i + 1] = _split(parts[i], deep, parent, own, prefix_cost)
        splits += 1
    return _assemble(parts, n, num_groups, num_replicas, prefix_cost, chain_req, chain_group, unsplit, target)


def plan_from_analysis(
    analysis: PrefixAnalysis, prompt_lens: Ints, output_budgets: Ints, num_replicas: int, **kw: Any
) -> WorkPlan:
    """``plan_work_units`` on the groups of a prefix analysis (keywords as there)."""
    shared = np.array([g.shared_prefix_len for g in analysis.groups], dtype=np.int64)
    parent = np.array([-1 if g.parent_group_id is None else g.parent_group_id for g in analysis.groups],
                      dtype=np.int64)
    return plan_work_units(prompt_lens, output_budgets, analysis.request_group, shared, parent, num_replicas, **kw)


def round_robin_prefill_tokens(
    tokens: np.ndarray, offsets: np.ndarray, num_replicas: int, block_size: int = 16,
    samples: Optional[Ints] = None, **analysis_kw: Any
) -> int:
    """Prefill tokens with rows spread round-robin (row i to replica i % N), each replica sharing prefixes
    only among its own rows: the baseline that whole-group units are measured against. samples: n of each
    row (its samples run together on its replica, as identical prompts); None: 1 each."""
    if num_replicas < 1:
        raise ValueError(f"num_replicas={num_replicas} must be >= 1")
    prompts = TokenArrays.from_any((np.asarray(tokens), np.asarray(offsets)))
    counts = np.ones(prompts.num_prompts, np.int64) if samples is None else np.asarray(samples, dtype=np.int64)
    total = 0
    for r in range(min(num_replicas, prompts.num_prompts)):
        mine = np.zeros_like(counts)  # replica r's rows, each as often as it runs; the others left out
        mine[r::num_replicas] = counts[r::num_replicas]
        analysis = analyze_prefixes(repeat_prompts(prompts, mine), block_size=block_size, **analysis_kw)
        total += analysis.stats.prefill_tokens
    return int(total)


# ------------------------------------------------------------------------------------------------ internals


class _Part(NamedTuple):
    """A unit while planning. root: the root group of its sole item, -1 if it holds several items or an
    ungrouped request. seq: its requests in split order, once known. seq_key: (deepest group, request id)
    of its first request in split order when it is a part of a split item, else None."""

    requests: np.ndarray
    cost: float
    root: int
    seq: Optional[np.ndarray]
    seq_key: Optional[tuple[int, int]]


def _checked(*arrays: Ints) -> tuple[np.ndarray, ...]:
    """(lens, budgets, group, shared, parent, root) as int64 arrays, or ValueError saying what is wrong."""
    lens, budgets, group, shared, parent = (np.asarray(a, dtype=np.int64).reshape(-1) for a in arrays)
    if not len(lens) == len(budgets) == len(group):
        raise ValueError("prompt_lens, output_budgets and request_group must have one entry per request")
    if len(shared) != len(parent):
        raise ValueError("group_shared_len and group_parent must have one entry per group")
    if ((group < 0) | (group >= len(shared))).any() or ((parent < -1) | (parent >= len(shared))).any():
        raise ValueError("request_group and group_parent must be group ids (group_parent -1 for none)")
    if (lens < 0).any() or (shared < 0).any():
        raise ValueError("prompt and prefix lengths must be >= 0")
    has_parent = parent >= 0
    if (shared[parent[has_parent]] <= 0).any() or (shared[has_parent] < shared[parent[has_parent]]).any():
        raise ValueError("a parent group must be a sharing group whose prefix its children extend")
    if (lens < shared[group]).any():
        raise ValueError("a prompt is shorter than its group's shared prefix")
    return lens, budgets, group, shared, parent, _roots(parent)


def _roots(parent: np.ndarray) -> np.ndarray:
    """Root group of every group, by pointer jumping (log depth vectorised steps)."""
    root = np.where(parent < 0, np.arange(len(parent), dtype=np.int64), parent)
    for _ in range(len(parent).bit_length() + 1):  # a tree converges by then; a cycle may never
        nxt = root[root]
        if np.array_equal(nxt, root):
            if (parent[root] >= 0).any():  # jumping can also settle inside a cycle
                break
            return root
        root = nxt
    raise ValueError("group_parent has a cycle")


def _costs(lens, budgets, group, shared, parent, decode_token_cost):
    # A budget below 0 (a prompt longer than the model's context) is a request that will not decode.
    own = (lens - shared[group]).astype(np.float64) + decode_token_cost * np.clip(budgets, 0, MAX_EXPECTED_OUTPUT)
    parent_len = np.where(parent >= 0, shared[np.maximum(parent, 0)], 0)
    return own, (shared - parent_len).astype(np.float64)


def _chains(deep: np.ndarray, parent: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(position, group) for every group on the path from each position's deepest group (-1: none) up to
    its root; one vectorised step per tree level."""
    pos = np.flatnonzero(deep >= 0)
    cur = deep[pos]
    out_pos, out_group = [pos], [cur]
    while len(pos):
        cur = parent[cur]
        pos, cur = pos[cur >= 0], cur[cur >= 0]
        out_pos.append(pos)
        out_group.append(cur)
    return np.concatenate(out_pos), np.concatenate(out_group)


def _pack(item_cost: np.ndarray, item_first: np.ndarray, target: float) -> np.ndarray:
    """Rule 2: unit index of every item. One searchsorted per packed unit, not a loop over items."""
    order = np.argsort(item_first, kind="stable")
    fits = item_cost[order] <= target
    small, big = order[fits], order[~fits]
    cum = np.cumsum(item_cost[small])
    starts, s, base = [], 0, 0.0
    while s < len(small):
        starts.append(s)
        # max(.., s + 1): rounding must never leave an item of cost <= C out of every unit.
        s = max(int(np.searchsorted(cum, base + target, side="right")), s + 1)
        base = float(cum[s - 1])
    unit = np.empty(len(item_cost), dtype=np.int64)
    unit[small] = np.repeat(np.arange(len(starts)), np.diff(np.array(starts + [len(small)], dtype=np.int64)))
    unit[big] = len(starts) + np.arange(len(big))
    return unit


def _by_unit(unit_of_req: np.ndarray, num_units: int) -> list[np.ndarray]:
    """Each unit's requests, ascending: views of one array sorted by unit."""
    order = np.argsort(unit_of_req, kind="stable")
    bounds = np.searchsorted(unit_of_req[order], np.arange(num_units + 1)).tolist()
    return [order[bounds[u] : bounds[u + 1]] for u in range(num_units)]


def _split(part: _Part, deep, parent, own, prefix_cost) -> list[_Part]:
    """Cut a unit of one item into two parts where the larger part is cheapest."""
    seq = part.requests[np.lexsort((part.requests, deep[part.requests]))] if part.seq is None else part.seq
    m = len(seq)
    deep_seq = deep[seq]
    pos, grp = _chains(deep_seq, parent)
    order = np.lexsort((pos, grp))
    pos, grp = pos[order], grp[order]
    starts = np.flatnonzero(np.r_[True, grp[1:] != grp[:-1]])
    first, last = pos[starts], pos[np.r_[starts[1:], len(pos)] - 1]
    weight = prefix_cost[grp[starts]]
    own_cum = np.cumsum(own[seq])
    # The head (seq[:k]) pays the groups first used before k, the tail (seq[k:]) those last used at or after k.
    head_prefix = np.cumsum(np.bincount(first, weight, minlength=m))
    tail_prefix = np.cumsum(np.bincount(last, weight, minlength=m)[::-1])[::-1]
    k = np.arange(1, m)
    head = own_cum[k - 1] + head_prefix[k - 1]
    tail = own_cum[-1] - own_cum[k - 1] + tail_prefix[k]
    cut = int(np.argmin(np.maximum(head, tail))) + 1
    return [
        _Part(np.sort(s), float(c), part.root, s, (int(deep_seq[at]), int(seq[at])))
        for s, c, at in ((seq[:cut], head[cut - 1], 0), (seq[cut:], tail[cut - 1], cut))
    ]


def _assemble(parts, n, num_groups, num_replicas, prefix_cost, chain_req, chain_group, unsplit, target) -> WorkPlan:
    """The plan of ``parts`` (already in dispatch order, so unit id = position): group lists, split parts."""
    unit_of_req = np.empty(n, dtype=np.int64)
    for u, part in enumerate(parts):
        unit_of_req[part.requests] = u
        part.requests.flags.writeable = False
    width = max(num_groups, 1)
    pairs = np.sort(unit_of_req[chain_req] * width + chain_group)
    pair_unit, pair_group = np.divmod(pairs[np.diff(pairs, prepend=-1) != 0], width)  # distinct (unit, group)
    pair_bounds = np.searchsorted(pair_unit, np.arange(len(parts) + 1)).tolist()
    pair_groups = pair_group.tolist()
    by_root: dict[int, list[tuple[tuple[int, int], int]]] = {}
    for u, part in enumerate(parts):
        if part.seq_key is not None:  # a part of a split item
            by_root.setdefault(part.root, []).append((part.seq_key, u))
    split_groups = {r: len(members) for r, members in sorted(by_root.items())}
    split_part = {u: (k, len(m)) for m in by_root.values() for k, (_, u) in enumerate(sorted(m))}
    units = tuple(
        WorkUnit(u, p.requests, p.cost, tuple(pair_groups[pair_bounds[u] : pair_bounds[u + 1]]), split_part.get(u))
        for u, p in enumerate(parts)
    )
    costs = [p.cost for p in parts]
    makespan, replica_costs, replica_units = simulate_dispatch(costs, num_replicas)
    total = math.fsum(costs)
    prefix_tokens = prefix_cost.astype(np.int64)  # exact: differences of integer lengths
    used = np.flatnonzero(np.bincount(pair_group, minlength=num_groups))
    extra = int(prefix_tokens[pair_group].sum() - prefix_tokens[used].sum())
    return WorkPlan(units, num_replicas, split_groups, total_cost=total, unsplit_cost=unsplit,
                    target_unit_cost=target, replica_costs=replica_costs, replica_units=replica_units,
                    makespan=makespan, lower_bound=max(total / num_replicas, max(costs, default=0.0)),
                    extra_prefix_tokens=extra)
