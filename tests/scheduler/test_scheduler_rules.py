"""Scheduler rules: budget, caps, chunking, preemption order, ordering, admission, block lifetimes."""

from __future__ import annotations

from hypothesis import example, given, settings
from hypothesis import strategies as st

from batchllm.config import SchedulerConfig
from batchllm.kv_cache.block_pool import BlockPool
from batchllm.scheduler.ordering import order_requests
from batchllm.scheduler.prefix_groups import build_prefix_groups
from batchllm.scheduler.scheduler import BatchScheduler
from tests.scheduler.fake_model import make_request, run_step


def _ids(out):
    return [(c.request.request_id, c.num_new_tokens) for c in out.chunks]


def test_count_mode_budget_cap_and_chunking():
    pool = BlockPool(100)
    config = SchedulerConfig.preset("vllm-like", max_num_batched_tokens=10, max_num_seqs=2, prefix_caching=False)
    scheduler = BatchScheduler(config, pool, block_size=4)
    scheduler.add_requests([make_request(i, list(range(1, n + 1))) for i, n in enumerate([7, 8, 3])])
    out = scheduler.schedule()
    assert _ids(out) == [("0", 7), ("1", 3)]
    assert not out.chunks[1].completes_sequence
    run_step(scheduler, out, [])
    assert _ids(scheduler.schedule()) == [("0", 1), ("1", 5)]  # decode first; request 2 waits for the cap


def test_preempts_worst_ranked_and_requeues_it_first():
    pool = BlockPool(4)
    config = SchedulerConfig.preset("vllm-like", max_num_batched_tokens=64, prefix_caching=False,
                                    preemption_mode="recompute")
    scheduler = BatchScheduler(config, pool, block_size=4)
    a, b = make_request(0, list(range(1, 8)), max_tokens=6), make_request(1, list(range(11, 19)), max_tokens=6)
    scheduler.add_requests([a, b])
    run_step(scheduler, scheduler.schedule(), [])  # a: 8 tokens in 2 blocks, b: 9 tokens in 2 blocks
    out = scheduler.schedule()  # b needs a third block: b (worst rank) is preempted, a runs
    assert out.preempted == [b] and b.num_computed_tokens == 0 and b.block_ids == []
    assert [c.request for c in out.chunks] == [a]


def test_priority_preempts_lower_priority_running_request():
    pool = BlockPool(4)
    config = SchedulerConfig.preset("batchllm", max_num_batched_tokens=64, preemption_mode="recompute")
    scheduler = BatchScheduler(config, pool, block_size=4)
    low = make_request(0, list(range(1, 12)), max_tokens=4, priority=5)
    scheduler.add_requests([low])
    run_step(scheduler, scheduler.schedule(), [])
    urgent = make_request(1, list(range(20, 31)), max_tokens=4, priority=0)
    scheduler.add_requests([urgent])
    out = scheduler.schedule()
    assert low in out.preempted
    assert [c.request for c in out.chunks] == [urgent]


def test_memory_mode_never_reserves_beyond_threshold_and_has_no_count_cap():
    pool = BlockPool(64)
    config = SchedulerConfig.preset("batchllm", max_num_batched_tokens=1000, memory_threshold=0.5, max_num_seqs=1,
                                    prefix_clustering=False)
    scheduler = BatchScheduler(config, pool, block_size=4)
    # each request needs ceil((6 + 6) / 4) = 3 blocks: 32 reservable blocks admit 10 of them
    scheduler.add_requests([make_request(i, [i + 1] * 6, max_tokens=6) for i in range(20)])
    out = scheduler.schedule()
    assert len(out.chunks) == 10 and scheduler.reserved_blocks == 30


def test_memory_threshold_above_one_over_commits_and_preempts_when_blocks_run_out():
    pool = BlockPool(30)
    config = SchedulerConfig.preset("batchllm", max_num_batched_tokens=1000, memory_threshold=2.0,
                                    prefix_clustering=False, preemption_mode="recompute")
    scheduler = BatchScheduler(config, pool, block_size=4)
    # 3 blocks each at the end: 20 of them promise 60 blocks of a 30-block pool, which threshold 2 allows
    requests = [make_request(i, [i + 1] * 6, max_tokens=6) for i in range(20)]
    scheduler.add_requests(requests)
    out = scheduler.schedule()
    assert len(out.chunks) == 15 and scheduler.reserved_blocks == 45  # 2 blocks each now: the pool is full
    finished = []
    run_step(scheduler, out, finished)
    while scheduler.has_unfinished():
        run_step(scheduler, scheduler.schedule(), finished)
    assert sorted(finished, key=lambda r: r.arrival_index) == requests
    assert scheduler.counters.preemptions > 0 and pool.num_free == pool.num_blocks


def test_decode_first_orders_by_decode_per_prefill():
    long_decode = make_request(0, [1] * 10, max_tokens=100)
    long_prefill = make_request(1, [2] * 500, max_tokens=10)
    middle = make_request(2, [3] * 50, max_tokens=50)
    order = order_requests([long_decode, long_prefill, middle], [], decode_first=True)
    assert [r.request_id for r in order] == ["0", "2", "1"]
    assert [r.request_id for r in order_requests([long_decode, long_prefill, middle], [], False)] == ["0", "1", "2"]


def test_group_prefix_request_precedes_members_and_is_shared():
    shared = list(range(100, 132))  # two full blocks of 16
    requests = [make_request(i, shared + [i + 1, i + 2, i + 3], max_tokens=3) for i in range(4)]
    requests.append(make_request(4, [9] * 40, max_tokens=3))
    groups = build_prefix_groups(requests, block_size=16, min_shared_len=None, multi_level=False, first_id=0)
    assert len(groups) == 1 and groups[0].prefix_len == 32
    order = order_requests(requests, groups, decode_first=False)
    assert order[0].is_prefix and [r.request_id for r in order[1:]] == ["0", "1", "2", "3", "4"]

    pool = BlockPool(40)
    scheduler = BatchScheduler(SchedulerConfig.preset("batchllm", max_num_batched_tokens=2000), pool, block_size=16)
    scheduler.add_requests(requests)
    groups = [requests[0].group]  # the scheduler's own run-time groups
    out = scheduler.schedule()  # the prefix runs alone for its group; the ungrouped request runs too
    assert sorted(_ids(out)) == [("4", 40), ("prefix-0", 32)]
    run_step(scheduler, out, [])
    out = scheduler.schedule()
    members = [c for c in out.chunks if c.request.request_id in "0123"]
    assert [c.num_new_tokens for c in members] == [3, 3, 3, 3]  # only the distinct suffix is prefilled
    prefix_blocks = groups[0].blocks
    assert all(c.request.block_ids[:2] == prefix_blocks for c in members)
    assert all(pool.ref_count(b) == 4 for b in prefix_blocks)  # the group's own hold was dropped
    finished = []
    while scheduler.has_unfinished():
        run_step(scheduler, scheduler.schedule(), finished)
        if groups[0].holders:
            assert all(pool.ref_count(b) == groups[0].holders for b in prefix_blocks)
    assert groups[0].dead and pool.num_used == 0


def _prompts_with_sharing(draw_lens, prefixes):
    prompts = []
    for i, (prefix_choice, tail_len) in enumerate(draw_lens):
        tail = [1000 + i * 50 + j for j in range(tail_len)]
        prompts.append((prefixes[prefix_choice] if prefix_choice < len(prefixes) else []) + tail)
    return prompts


@settings(max_examples=60, deadline=None)
@given(
    shape=st.lists(st.tuples(st.integers(0, 3), st.integers(1, 12)), min_size=1, max_size=10),
    max_tokens=st.integers(1, 6),
    budget=st.integers(1, 40),
    extra_blocks=st.integers(0, 20),
    preset=st.sampled_from(["batchllm", "vllm-like"]),
    multi_level=st.booleans(),
    preemption=st.sampled_from(["recompute", "swap"]),
    hint=st.sampled_from([None, 1]),
)
@example(
    shape=[(0, 1), (0, 1), (2, 1), (2, 1)],
    max_tokens=5,
    budget=3,
    extra_blocks=1,
    preset='batchllm',
    multi_level=False,
    preemption='recompute',
    hint=None,
).via('discovered failure: groups pinning memory deadlocked')
@example(
    shape=[(0, 1), (0, 1), (2, 1), (2, 1)],
    max_tokens=1,
    budget=3,
    extra_blocks=1,
    preset='batchllm',
    multi_level=False,
    preemption='recompute',
    hint=None,
).via('discovered failure: groups pinning memory deadlocked')
def test_every_request_finishes_without_leaks(shape, max_tokens, budget, extra_blocks, preset, multi_level,
                                               preemption, hint):
    block_size = 4
    base = list(range(1, 13))
    prefixes = [base, base + [50, 51, 52, 53], list(range(60, 68))]  # nested and separate prefixes
    prompts = _prompts_with_sharing(shape, prefixes)
    longest = max(len(p) for p in prompts) + max_tokens
    num_blocks = (longest + block_size - 1) // block_size + extra_blocks
    pool = BlockPool(num_blocks, enable_caching=preset == "vllm-like")
    host = BlockPool(64)
    config = SchedulerConfig.preset(preset, max_num_batched_tokens=budget, max_num_seqs=3,
                                    multi_level=multi_level, preemption_mode=preemption)
    scheduler = BatchScheduler(config, pool, block_size, host_pool=host)
    requests = [make_request(i, p, max_tokens, hint=hint) for i, p in enumerate(prompts)]
    scheduler.add_requests(requests)
    finished = []
    for _ in range(3000):
        if not scheduler.has_unfinished():
            break
        out = scheduler.schedule()
        assert out.chunks, "no progress"
        assert out.num_tokens <= budget
        # every held block's ref count equals its holders: running requests + groups' own holds
        holders: dict[int, int] = {}
        for r in scheduler.running + [r for r in requests if r.swapped_blocks is not None]:
            for b in r.block_ids:
                holders[b] = holders.get(b, 0) + 1
        groups = {id(r.group): r.group for r in requests if r.group is not None}
        for g in groups.values():
            if g.blocks is not None and g.unattached_members > 0:
                for b in g.blocks:
                    holders[b] = holders.get(b, 0) + 1
        for b in range(num_blocks):
            assert pool.ref_count(b) == holders.get(b, 0), (b, pool.ref_count(b), holders.get(b, 0))
        run_step(scheduler, out, finished)
    assert sorted(r.request_id for r in finished) == sorted(r.request_id for r in requests)
    assert all(r.num_output_tokens == max_tokens for r in requests)
    assert pool.num_used == 0 and host.num_free == 64
