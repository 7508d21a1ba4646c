"""The work-unit planner against brute-force recomputations from its definitions."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batchllm.batch.work_units import (
    DECODE_TOKEN_COST,
    MAX_EXPECTED_OUTPUT,
    WorkPlan,
    expected_costs,
    plan_from_analysis,
    plan_work_units,
    round_robin_prefill_tokens,
    simulate_dispatch,
)
from batchllm.prefix import analyze_prefixes

EPS = 1e-6


@dataclass
class Instance:
    lens: np.ndarray
    budgets: np.ndarray
    group: np.ndarray
    shared: np.ndarray
    parent: np.ndarray

    def plan(self, num_replicas: int, **kw) -> WorkPlan:
        return plan_work_units(self.lens, self.budgets, self.group, self.shared, self.parent, num_replicas, **kw)


# ------------------------------------------------------------------------------------- oracles (plain Python)


def chain(inst: Instance, g: int) -> list[int]:
    """Sharing groups whose prefix a member of g uses: g and its ancestors (none for the ungrouped)."""
    out = []
    while g >= 0 and inst.shared[g] > 0:
        out.append(g)
        g = int(inst.parent[g])
    return out


def own_cost(inst: Instance, i: int) -> float:
    return float(inst.lens[i] - inst.shared[inst.group[i]]) + DECODE_TOKEN_COST * min(
        int(inst.budgets[i]), MAX_EXPECTED_OUTPUT
    )


def prefix_cost(inst: Instance, g: int) -> int:
    p = int(inst.parent[g])
    return int(inst.shared[g]) - (int(inst.shared[p]) if p >= 0 else 0)


def brute_unit(inst: Instance, requests) -> tuple[float, list[int]]:
    touched = sorted({g for i in requests for g in chain(inst, int(inst.group[i]))})
    return sum(own_cost(inst, int(i)) for i in requests) + sum(prefix_cost(inst, g) for g in touched), touched


def atom_cost(inst: Instance, i: int) -> float:
    return own_cost(inst, i) + sum(prefix_cost(inst, g) for g in chain(inst, int(inst.group[i])))


def item_of(inst: Instance, i: int) -> int:
    """Request i's item: its root group, or -1 - i for an ungrouped request (an item of its own)."""
    c = chain(inst, int(inst.group[i]))
    return c[-1] if c else -1 - i


def items(inst: Instance) -> dict[int, list[int]]:
    """Root group -> its requests (all levels), ungrouped requests left out."""
    out: dict[int, list[int]] = {}
    for i in range(len(inst.group)):
        c = chain(inst, int(inst.group[i]))
        if c:
            out.setdefault(c[-1], []).append(i)
    return out


# ------------------------------------------------------------------------------------------------ instances


@st.composite
def instances(draw, max_requests: int = 50) -> Instance:
    """Groups in pre-order (each new group hangs under a node of the current path, up to 3 levels), the
    ungrouped group last, requests spread with one "hot" group, lengths and budgets at random."""
    num_groups = draw(st.integers(0, 8))
    shared, parent, path = [], [], []
    for g in range(num_groups):
        depth = draw(st.integers(0, min(len(path), 2)))
        p = path[depth - 1] if depth else -1
        shared.append((shared[p] if p >= 0 else 0) + draw(st.integers(1, 300)))
        parent.append(p)
        path = path[:depth] + [g]
    shared.append(0)
    parent.append(-1)
    n = draw(st.integers(1, max_requests))
    hot = draw(st.integers(0, num_groups))
    group = [hot if draw(st.booleans()) else draw(st.integers(0, num_groups)) for _ in range(n)]
    extra = draw(st.lists(st.integers(1, 400), min_size=n, max_size=n))
    budgets = draw(st.lists(st.integers(0, 2000), min_size=n, max_size=n))
    shared_a = np.array(shared, dtype=np.int64)
    group_a = np.array(group, dtype=np.int64)
    return Instance(shared_a[group_a] + np.array(extra), np.array(budgets), group_a, shared_a, np.array(parent))


def numpy_instance(seed: int, n: int, num_roots: int, zipf: float = 1.3) -> Instance:
    """A Zipf-like batch: root groups of Zipf sizes, a child group under every third root, 20 % ungrouped."""
    rng = np.random.default_rng(seed)
    roots = np.arange(num_roots)
    children = roots[roots % 3 == 0]
    num_groups = num_roots + len(children)
    # Child of root r is group num_roots + k (not pre-order: the planner must be right anyway).
    parent = np.r_[np.full(num_roots, -1), children, -1]
    shared = np.r_[rng.integers(16, 2000, num_roots), np.zeros(len(children), np.int64), 0]
    shared[num_roots:num_groups] = shared[children] + rng.integers(16, 500, len(children))
    group = (rng.zipf(zipf, n) - 1) % num_roots
    to_child = (group % 3 == 0) & (rng.random(n) < 0.5)
    group[to_child] = num_roots + group[to_child] // 3
    group[rng.random(n) < 0.2] = num_groups  # the ungrouped group
    lens = shared[group] + rng.integers(1, 800, n)
    return Instance(lens, rng.integers(0, 2500, n), group, shared, parent)


# -------------------------------------------------------------------------------------------------- checks


def check_plan(inst: Instance, plan: WorkPlan, num_replicas: int) -> None:
    n = len(inst.group)
    all_ids = np.concatenate([u.request_ids for u in plan.units]) if plan.units else np.zeros(0, np.int64)
    assert np.array_equal(np.sort(all_ids), np.arange(n)), "every request in exactly one unit"
    assert [u.unit_id for u in plan.units] == list(range(len(plan.units)))
    for u in plan.units:
        assert u.request_ids.dtype == np.int64 and np.all(np.diff(u.request_ids) > 0)
        cost, touched = brute_unit(inst, u.request_ids.tolist())
        assert u.cost == pytest.approx(cost, abs=EPS) and list(u.group_ids) == touched
        if len({item_of(inst, i) for i in u.request_ids.tolist()}) > 1:  # packed: at most C
            assert u.cost <= plan.target_unit_cost * (1 + 1e-9) and u.split_part is None
    costs = [u.cost for u in plan.units]
    assert all(a >= b for a, b in zip(costs, costs[1:])), "dispatch order is cost descending"
    assert plan.total_cost == pytest.approx(sum(costs), abs=EPS)
    unit_of = plan.unit_of_request(n)
    # Groups whole unless split; the parts of a split item partition it.
    for root, reqs in items(inst).items():
        holders = sorted(set(unit_of[reqs].tolist()))
        if root not in plan.split_groups:
            assert len(holders) == 1
            continue
        parts = plan.split_groups[root]
        assert len(holders) == parts >= 2
        assert sorted(plan.units[h].split_part for h in holders) == [(k, parts) for k in range(parts)]
        assert sum(plan.units[h].num_requests for h in holders) == len(reqs)
    assert sum(u.split_part is not None for u in plan.units) == sum(plan.split_groups.values())
    if num_replicas == 1:
        assert plan.split_groups == {}
    # Extra prefix tokens: (units touching g - 1) x g's prefix, over the touched groups.
    touching: dict[int, int] = {}
    for u in plan.units:
        for g in u.group_ids:
            touching[g] = touching.get(g, 0) + 1
    assert plan.extra_prefix_tokens == sum((k - 1) * prefix_cost(inst, g) for g, k in touching.items())
    assert plan.total_cost == pytest.approx(plan.unsplit_cost + plan.extra_prefix_tokens, abs=EPS)
    used = {g for x in set(inst.group.tolist()) for g in chain(inst, x)}
    unsplit = sum(own_cost(inst, i) for i in range(n)) + sum(prefix_cost(inst, g) for g in used)
    assert plan.unsplit_cost == pytest.approx(unsplit, abs=EPS)
    # The dispatch.
    makespan, replica_costs, replica_units = simulate_dispatch(costs, num_replicas)
    assert (plan.makespan, plan.replica_costs, plan.replica_units) == (makespan, replica_costs, replica_units)
    assert sum(replica_costs) == pytest.approx(plan.total_cost, abs=EPS)
    assert plan.makespan == max(replica_costs)
    assert sorted(u for r in replica_units for u in r) == list(range(len(plan.units)))
    assert plan.lower_bound == pytest.approx(max(plan.total_cost / num_replicas, max(costs, default=0.0)))
    assert plan.makespan >= plan.lower_bound - EPS


def check_target(inst: Instance, plan: WorkPlan, num_replicas: int, upr: int, tol: float) -> bool:
    """If every atom fits in C and the units are fine enough for list scheduling (Graham: makespan <=
    total/N + (1 - 1/N) x largest unit), the plan is within tolerance. Returns whether it applied."""
    atoms = max(atom_cost(inst, i) for i in range(len(inst.group)))
    if atoms > plan.target_unit_cost * (1 - 1e-12) or (1 - 1 / num_replicas) / upr > tol:
        return False
    assert plan.makespan <= (1 + tol) * plan.total_cost / num_replicas * (1 + 1e-9)
    return True


replicas = st.integers(1, 8)
units_per_replica = st.sampled_from([1, 2, 4, 16])
tolerances = st.sampled_from([0.05, 0.1, 0.3])


@settings(max_examples=200, deadline=None)
@given(instances(), replicas, units_per_replica, tolerances)
def test_plan_matches_its_definitions(inst, num_replicas, upr, tol):
    plan = inst.plan(num_replicas, units_per_replica=upr, tolerance=tol)
    check_plan(inst, plan, num_replicas)
    check_target(inst, plan, num_replicas, upr, tol)


@settings(max_examples=200, deadline=None)
@given(instances(), replicas, units_per_replica, tolerances)
def test_a_split_happens_only_when_needed(inst, num_replicas, upr, tol):
    unsplit = inst.plan(num_replicas, units_per_replica=upr, tolerance=1e9)
    assert unsplit.split_groups == {} and unsplit.total_cost == unsplit.unsplit_cost
    costs = sorted((brute_unit(inst, u.request_ids.tolist())[0] for u in unsplit.units), reverse=True)
    makespan = simulate_dispatch(costs, num_replicas)[0]
    assert makespan == pytest.approx(unsplit.makespan, abs=EPS)
    plan = inst.plan(num_replicas, units_per_replica=upr, tolerance=tol)
    if makespan <= (1 + tol) * unsplit.unsplit_cost / num_replicas * (1 - 1e-9):
        assert plan.split_groups == {}
        assert [u.request_ids.tolist() for u in plan.units] == [u.request_ids.tolist() for u in unsplit.units]


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(2, 8), st.sampled_from([(16, 0.1), (8, 0.2), (4, 0.3)]))
def test_fine_enough_batches_are_balanced_within_tolerance(seed, num_replicas, upr_tol):
    upr, tol = upr_tol  # (1 - 1/N) / upr <= tol: fine enough for list scheduling
    inst = numpy_instance(seed, n=3000, num_roots=40, zipf=1.5)
    plan = inst.plan(num_replicas, units_per_replica=upr, tolerance=tol)
    check_plan(inst, plan, num_replicas)
    # Atoms are <= 800 + 2000 + 2.5 x 1024 tokens, C is about 3000 x 2000 / 128: the target applies.
    assert check_target(inst, plan, num_replicas, upr, tol)


def test_coarse_units_can_miss_the_tolerance():
    # Why check_target asks for (1 - 1/N) / units_per_replica <= tolerance: three singletons 8, 7, 5 with
    # N = 2 and one unit per replica (C = 10) are three indivisible units; list scheduling gives 8 | 7 + 5.
    plan = plan_work_units([8, 7, 5], [0, 0, 0], [0, 0, 0], [0], [-1], 2, units_per_replica=1)
    assert [u.cost for u in plan.units] == [8, 7, 5] and plan.makespan == 12 == 1.2 * plan.total_cost / 2
    assert plan.split_groups == {} and plan.lower_bound == 10


def test_expected_costs_follow_the_definitions():
    own, prefix = expected_costs([100, 50, 7], [10, 5000, -3], [0, 1, 2], [30, 40, 0], [-1, 0, -1])
    assert own.tolist() == [100 - 30 + 2.5 * 10, 50 - 40 + 2.5 * 1024, 7.0]
    assert prefix.tolist() == [30.0, 10.0, 0.0]
    for parents in ([1, 0, -1], [0, -1, -1], [1, 2, 0]):  # a cycle of 3 never settles under pointer jumping
        with pytest.raises(ValueError, match="cycle"):
            expected_costs([100], [1], [0], [40, 40, 40], parents)
    with pytest.raises(ValueError, match="shorter"):
        expected_costs([10], [1], [0], [40], [-1])


def test_one_dominant_group_is_split_and_balanced():
    # Group 0: 900 members x (100 + 2.5 x 36) + a 64-token prefix; 100 ungrouped requests of the same cost.
    n_hot, n_free = 900, 100
    group = np.r_[np.zeros(n_hot, np.int64), np.ones(n_free, np.int64)]
    shared = np.array([64, 0])
    lens = np.where(group == 0, 164, 100)
    inst = Instance(lens, np.full(n_hot + n_free, 36), group, shared, np.array([-1, -1]))
    plan = inst.plan(4)
    check_plan(inst, plan, 4)
    hot_cost = plan.unsplit_cost - n_free * 190
    assert hot_cost / plan.unsplit_cost > 0.9
    assert 0 in plan.split_groups and plan.extra_prefix_tokens == 64 * (plan.split_groups[0] - 1)
    assert plan.makespan <= 1.1 * plan.total_cost / 4
    assert inst.plan(1).split_groups == {} and inst.plan(1).num_units <= 16


def test_a_zipf_like_batch():
    inst = numpy_instance(7, n=20_000, num_roots=500)
    plan = inst.plan(8)
    check_plan(inst, plan, 8)
    assert plan.imbalance <= 1.1
    assert plan.extra_prefix_tokens < 0.01 * plan.total_cost  # splits are the exception, not the rule


def test_plan_from_analysis_keeps_the_analysis_groups_whole():
    rng = np.random.default_rng(3)
    prompts = [list(range(1000 * g, 1000 * g + 64)) + rng.integers(0, 500, 20).tolist()
               for g in range(6) for _ in range(5)] + [rng.integers(0, 500, 30).tolist() for _ in range(10)]
    analysis = analyze_prefixes(prompts, multi_level=True)
    lens = np.array([len(p) for p in prompts])
    plan = plan_from_analysis(analysis, lens, np.full(len(prompts), 50), 2, units_per_replica=2)
    unit_of = plan.unit_of_request(len(prompts))
    for g in analysis.sharing_groups:
        if g.group_id not in plan.split_groups and g.parent_group_id is None:
            assert len(set(unit_of[analysis.requests_using(g.group_id)].tolist())) == 1
    assert plan.makespan >= plan.lower_bound - EPS


def four_groups_of_eight() -> tuple[np.ndarray, np.ndarray]:
    """Row 8j + m: group j's 64-token prefix, then 10 tokens of its own (which differ from the first)."""
    rows = [np.r_[np.arange(64) + 1000 * j, 100_000 + 10 * (8 * j + m) + np.arange(10)]
            for j in range(4) for m in range(8)]
    offsets = np.r_[0, np.cumsum([len(r) for r in rows])].astype(np.int64)
    return np.concatenate(rows).astype(np.int32), offsets


def test_round_robin_prefill_tokens():
    tokens, offsets = four_groups_of_eight()
    whole = analyze_prefixes((tokens, offsets), block_size=16).stats.prefill_tokens
    assert round_robin_prefill_tokens(tokens, offsets, 1) == whole == 4 * 64 + 32 * 10
    # Round-robin: each of the 4 replicas gets 2 members of every group, so computes every prefix once.
    assert round_robin_prefill_tokens(tokens, offsets, 4) == 4 * 4 * 64 + 32 * 10
    assert round_robin_prefill_tokens(tokens, offsets, 40) == 32 * 74  # one row per replica: nothing shared


def test_empty_and_tiny_batches():
    empty = plan_work_units([], [], [], [], [], 4)
    assert empty.units == () and empty.makespan == 0.0 and empty.split_groups == {}
    one = plan_work_units([10], [4], [0], [0], [-1], 3)
    assert one.num_units == 1 and one.units[0].cost == 10 + 2.5 * 4 and one.units[0].group_ids == ()


def test_plans_200k_requests_vectorised():
    inst = numpy_instance(11, n=200_000, num_roots=20_000)
    start = time.perf_counter()
    plan = inst.plan(8)
    print(f"planned 200k requests in {time.perf_counter() - start:.2f} s: {plan.summary()}")
    ids = np.sort(np.concatenate([u.request_ids for u in plan.units]))
    assert np.array_equal(ids, np.arange(200_000))
    assert plan.total_cost == pytest.approx(sum(u.cost for u in plan.units))
