"""The KV cache manager under random admit / grow / swap / free sequences, with a prefix group borrowed by
members: every block's reference count equals its holders, nothing is freed twice, and once every request
has gone the device and host pools are whole and no reservation is left."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from batchllm.core.request import RequestStatus, SharedPrefix
from batchllm.kv_cache.block_pool import BlockPool
from batchllm.kv_cache.manager import KVCacheManager
from tests.scheduler.fake_model import make_request

BLOCK = 4
PREFIX = list(range(100, 108))  # two full blocks shared by the group's members

ops = st.lists(
    st.tuples(st.sampled_from(["admit", "grow", "swap_out", "swap_in", "free", "evict"]), st.integers(0, 50)),
    max_size=60,
)


def _holders(manager: KVCacheManager, requests) -> dict[int, int]:
    held: dict[int, int] = {}
    for r in requests:
        for b in r.block_ids:
            held[b] = held.get(b, 0) + 1
    for group in manager.resident_groups.values():
        if not group.all_attached:  # the group's own hold
            for b in group.blocks:
                held[b] = held.get(b, 0) + 1
    return held


@settings(max_examples=150, deadline=None)
@given(num_blocks=st.integers(4, 24), num_host=st.integers(0, 8), caching=st.booleans(),
       limit=st.sampled_from([None, 8.0, 1e9]), operations=ops)
def test_random_block_bookkeeping_keeps_the_pools_whole(num_blocks, num_host, caching, limit, operations):
    pool = BlockPool(num_blocks, enable_caching=caching)
    host = BlockPool(num_host) if num_host else None
    manager = KVCacheManager(pool, BLOCK, host)
    prefix_request = make_request(-1, PREFIX, max_tokens=0)
    group = SharedPrefix(0, len(PREFIX), prefix_request)
    prefix_request.computes_prefix_of = group
    waiting = [make_request(i, (PREFIX if i % 2 else []) + [i] * (1 + i % 9), max_tokens=3) for i in range(12)]
    for r in waiting:
        if r.prompt_token_ids[: len(PREFIX)] == PREFIX:
            group.add_member(r)
    waiting.insert(0, prefix_request)
    running, swapped = [], []

    def check():
        held = _holders(manager, running + swapped)
        for b in range(num_blocks):
            assert pool.ref_count(b) == held.get(b, 0), (b, pool.ref_count(b), held.get(b, 0))
        if host is not None:
            assert host.num_used == sum(len(r.swapped_blocks) for r in swapped)

    for op, arg in operations:
        if op == "admit" and waiting:
            request = waiting[arg % len(waiting)]
            if request.group is not None and not request.group.ready:
                continue
            if request.group is not None and request.group.dead:
                request.group = None
            borrowed, cached, start = manager.reusable_prefix(request)
            num_new = request.num_tokens - start
            if num_new > 0 and manager.allocate_admission(request, borrowed, cached, start, num_new, limit):
                manager.reserve(request)
                request.num_computed_tokens = start + num_new
                waiting.remove(request)
                running.append(request)
                manager.cache_computed_blocks(request)
                if request is prefix_request:
                    running.remove(request)
                    request.status = RequestStatus.FINISHED
                    manager.prefix_computed(request)
        elif op == "grow" and running:
            request = running[arg % len(running)]
            request.token_ids.append(7)  # one more token, computed
            if manager.allocate_slots(request, 1) is None:
                request.token_ids.pop()
            else:
                request.num_computed_tokens += 1
        elif op == "swap_out" and running:
            request = running[arg % len(running)]
            if manager.can_swap_out(len(request.block_ids) - request.num_shared_blocks):
                manager.swap_out(request)
                running.remove(request)
                swapped.append(request)
        elif op == "swap_in" and swapped:
            request = swapped[arg % len(swapped)]
            if manager.swap_in(request, 0, limit) is not None:
                manager.step_done()
                swapped.remove(request)
                running.append(request)
        elif op == "free" and (running or swapped):
            both = running + swapped
            request = both[arg % len(both)]
            (running if request in running else swapped).remove(request)
            manager.free_swapped(request)
            manager.free(request)
        elif op == "evict":
            for idle in manager.idle_groups(keep=None):
                manager.evict_group(idle)
        check()

    for request in running + swapped:
        manager.free_swapped(request)
        manager.free(request)
    running, swapped = [], []
    for idle in manager.idle_groups(keep=None):  # computed but some member never came: its own hold
        manager.evict_group(idle)
    assert pool.num_free == num_blocks and manager.reserved_blocks == 0 and not manager.resident_groups
    assert host is None or host.num_free == num_host
    assert group.holders == 0
