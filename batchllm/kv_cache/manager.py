"""Which KV blocks each request and prefix group holds: allocation, borrowing, reservations, swaps, caching.

The scheduler decides who runs and whom to preempt; this manager owns the blocks and answers one question
per step, as vLLM v1's KVCacheManager.allocate_slots does: the blocks, or None when they do not fit.
"""

from __future__ import annotations

from typing import Optional

from batchllm.core.request import Request, SharedPrefix
from batchllm.kv_cache.block_pool import BlockPool
from batchllm.kv_cache.block_table import kv_blocks_needed
from batchllm.kv_cache.prefix_hash import extend_block_hashes


class KVCacheManager:
    def __init__(self, pool: BlockPool, block_size: int, host_pool: Optional[BlockPool] = None) -> None:
        self.pool = pool
        self.block_size = block_size
        self.host_pool = host_pool
        self.reserved_blocks = 0  # memory-centric admission: blocks counted for running requests and groups
        self.resident_groups: dict[int, SharedPrefix] = {}  # id -> group whose prefix KV is in the pool
        self._pending_host_release: list[int] = []

    # ---- reservations (memory-centric admission) ---------------------------------------------------
    def reserve_for(self, request: Request, num_borrowed: Optional[int] = None) -> int:
        """KV blocks a request will hold at most (prompt + expected output), not counting borrowed ones
        (`num_borrowed`: the group blocks it is about to borrow; default: those it borrows now)."""
        if request.is_prefix:
            total = request.num_prompt_tokens
        else:
            total = request.num_prompt_tokens + request.expected_output_tokens
        borrowed = request.num_shared_blocks if num_borrowed is None else num_borrowed
        return max(0, kv_blocks_needed(total, self.block_size) - borrowed)

    def over_limit(self, request: Request, limit: Optional[float], num_borrowed: Optional[int] = None) -> bool:
        return limit is not None and self.reserved_blocks + self.reserve_for(request, num_borrowed) > limit

    def reserve(self, request: Request) -> None:
        request.reserved_blocks = self.reserve_for(request)
        self.reserved_blocks += request.reserved_blocks

    def _unreserve(self, request: Request) -> None:
        self.reserved_blocks -= request.reserved_blocks
        request.reserved_blocks = 0

    # ---- allocation --------------------------------------------------------------------------------
    def allocate_slots(self, request: Request, num_new_tokens: int) -> Optional[list[int]]:
        """Blocks for the request's next `num_new_tokens` tokens, appended to its block_ids; None if the pool
        has too few free (nothing changes then)."""
        need = kv_blocks_needed(request.num_computed_tokens + num_new_tokens, self.block_size) - len(request.block_ids)
        if need <= 0:  # most decode steps: the token fits in the last block
            return []
        if need > self.pool.num_free:
            return None
        blocks = self.pool.allocate(need)
        request.block_ids.extend(blocks)
        return blocks

    def reusable_prefix(self, request: Request) -> tuple[list[int], list[int], int]:
        """(group blocks it may borrow, cached blocks it may take, the token it would start at) for admission."""
        borrowed: list[int] = []
        cached: list[int] = []
        if request.group is not None and request.group.ready:
            borrowed = request.group.blocks
        elif self.pool.enable_caching and request.num_computed_tokens == 0:
            num_full = (request.num_tokens - 1) // self.block_size
            extend_block_hashes(request, self.block_size, num_full)
            cached = self.pool.cached_prefix(request.block_hashes[:num_full])
        if borrowed:
            return borrowed, cached, request.group.prefix_len
        return borrowed, cached, len(cached) * self.block_size if cached else request.num_computed_tokens

    def allocate_admission(
        self, request: Request, borrowed: list[int], cached: list[int], start: int, num_new: int,
        limit: Optional[float],
    ) -> bool:  # fmt: skip
        """Give a waiting request its reused blocks (from `reusable_prefix`) and fresh ones for `num_new`
        tokens from `start`; False (nothing changes) if they do not fit the pool or the reservation `limit`."""
        reused = borrowed or cached
        need = kv_blocks_needed(start + num_new, self.block_size) - len(reused)
        revived = sum(1 for b in cached if self.pool.ref_count(b) == 0)  # evictable blocks we are about to take
        if need > self.pool.num_free - revived or self.over_limit(request, limit, num_borrowed=len(borrowed)):
            return False
        if borrowed:
            self._attach_to_group(request)
        elif cached:
            self.pool.acquire_cached(cached)
            request.block_ids = list(cached)
            request.num_computed_tokens = start
        request.block_ids.extend(self.pool.allocate(need))
        return True

    def _attach_to_group(self, request: Request) -> None:
        group = request.group
        self.pool.share(group.blocks)
        request.block_ids = list(group.blocks)
        request.num_shared_blocks = len(group.blocks)
        request.num_computed_tokens = group.prefix_len
        if group.attach(request):  # every member holds the blocks now: drop the group's own hold
            self._drop_group_hold(group)

    # ---- release -----------------------------------------------------------------------------------
    def free(self, request: Request) -> None:
        """Drop everything a request holds: own blocks, borrowed blocks, its hold on the group, its reservation."""
        self.pool.release(request.block_ids[::-1])
        request.block_ids = []
        if request.num_shared_blocks:
            request.num_shared_blocks = 0
            self._drop_group_holder(request.group)
        self._unreserve(request)

    def free_swapped(self, request: Request) -> None:
        """Forget the host copy of a request that will not run again."""
        if request.swapped_blocks is not None:
            self.host_pool.release(request.swapped_blocks)
            request.swapped_blocks = None

    def _drop_group_hold(self, group: SharedPrefix) -> None:
        """The group's own hold goes: its references on the blocks, and it as a holder."""
        self.pool.release(group.blocks[::-1])
        self._drop_group_holder(group)

    def _drop_group_holder(self, group: SharedPrefix) -> None:
        if group.drop_holder():  # last holder gone: the prefix KV is freed (the holders released its blocks)
            self.resident_groups.pop(id(group), None)
            self.reserved_blocks -= group.take_reservation()
            if group.parent is not None:
                self._drop_group_holder(group.parent)

    def idle_groups(self, keep: Optional[SharedPrefix]) -> list[SharedPrefix]:
        """Resident groups whose prefix no member uses yet (only the group's own hold keeps it)."""
        return [g for g in self.resident_groups.values() if g is not keep and g.idle]

    def evict_group(self, group: SharedPrefix) -> None:
        self._drop_group_hold(group)

    def prefix_computed(self, prefix_request: Request) -> None:
        """The prefix request's references become its group's own hold; its hold on a parent group (if any)
        passes to this group, dropped when this group dies."""
        group = prefix_request.computes_prefix_of
        group.become_resident(list(prefix_request.block_ids), prefix_request.reserved_blocks)
        self.resident_groups[id(group)] = group
        prefix_request.reserved_blocks = 0
        prefix_request.block_ids = []
        prefix_request.num_shared_blocks = 0
        if group.all_attached:
            self._drop_group_hold(group)

    # ---- swapping ----------------------------------------------------------------------------------
    def can_swap_out(self, num_blocks: int) -> bool:
        return self.host_pool is not None and 0 < num_blocks <= self.host_pool.num_free

    def swap_out(self, request: Request) -> list[tuple[int, int]]:
        """Move the request's private blocks to host blocks; (device block, host block) pairs to copy."""
        private = request.block_ids[request.num_shared_blocks :]
        host_blocks = self.host_pool.allocate(len(private))
        self.pool.release(private[::-1])
        request.block_ids = request.block_ids[: request.num_shared_blocks]
        request.swapped_blocks = host_blocks
        self._unreserve(request)
        return list(zip(private, host_blocks))

    def swap_in(self, request: Request, num_new: int, limit: Optional[float]) -> Optional[list[tuple[int, int]]]:
        """Device blocks for a swapped-out request and its next `num_new` tokens; (host, device) pairs to copy,
        or None (nothing changes) if they do not fit the pool or the reservation `limit`."""
        host_blocks = request.swapped_blocks
        grow = kv_blocks_needed(request.num_computed_tokens + num_new, self.block_size) - (
            request.num_shared_blocks + len(host_blocks)
        )
        if len(host_blocks) + max(0, grow) > self.pool.num_free or self.over_limit(request, limit):
            return None
        device_blocks = self.pool.allocate(len(host_blocks))
        self._pending_host_release.extend(host_blocks)  # freed after the copy has run
        request.block_ids.extend(device_blocks)
        request.block_ids.extend(self.pool.allocate(max(0, grow)))
        request.swapped_blocks = None
        return list(zip(host_blocks, device_blocks))

    # ---- after the model ran -----------------------------------------------------------------------
    def step_done(self) -> None:
        """The iteration's copies have run: host blocks swapped back in are free again."""
        if self._pending_host_release:
            self.host_pool.release(self._pending_host_release)
            self._pending_host_release = []

    def cache_computed_blocks(self, request: Request) -> None:
        """Prefix caching: remember the hashes of the request's full computed blocks."""
        if self.pool.enable_caching:
            full = request.num_computed_tokens // self.block_size
            extend_block_hashes(request, self.block_size, full)
            for i in range(full):
                self.pool.cache_block(request.block_ids[i], request.block_hashes[i])
