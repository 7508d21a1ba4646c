"""The scheduler: which requests run this iteration, with how many tokens, in which KV blocks.

One loop serves every policy (see SchedulerConfig): BatchLLM's prefix groups, decode-first order and
memory-centric admission, or the vLLM-like baseline (FCFS, LRU prefix cache, count caps).

Each iteration: (1) requests of better priority waiting for memory preempt worse running ones;
(2) every running decode gets its token, then running prefills continue in rank order, all within the
token budget; a request that needs a block when none is free preempts the worst-ranked running request
(swap to host or recompute); (3) waiting requests are admitted in rank order while the admission rule
allows. Members of a prefix group wait until the group's prefix KV exists, then start from it.
The scheduler owns every request's progress; the KV cache manager owns the blocks.
"""

from __future__ import annotations

import bisect
from collections import deque
from typing import Optional, Sequence

from batchllm.config import SchedulerConfig
from batchllm.core.plan import ScheduledChunk, SchedulerOutput, is_decode
from batchllm.core.preemption import PreemptionCosts
from batchllm.core.request import PENDING_TOKEN, Request, RequestStatus, SharedPrefix
from batchllm.kv_cache.block_pool import BlockPool
from batchllm.kv_cache.block_table import kv_blocks_needed
from batchllm.kv_cache.manager import KVCacheManager
from batchllm.scheduler.interface import SchedulerCounters
from batchllm.scheduler.ordering import order_requests
from batchllm.scheduler.prefix_groups import build_prefix_groups


class BatchScheduler:
    def __init__(
        self,
        config: SchedulerConfig,
        pool: BlockPool,
        block_size: int,
        host_pool: Optional[BlockPool] = None,
        costs: Optional[PreemptionCosts] = None,
    ) -> None:
        self.config = config
        self.pool = pool
        self.block_size = block_size
        self.host_pool = host_pool
        self.kv = KVCacheManager(pool, block_size, host_pool)
        self.costs = costs or PreemptionCosts()
        self._waiting: dict[int, deque[Request]] = {}  # priority -> queue in rank order
        self._parked: dict[int, list[Request]] = {}  # id(group) -> members waiting for its prefix
        self.running: list[Request] = []  # sorted by rank
        self._next_rank = 0
        self._next_group_id = 0
        self.counters = SchedulerCounters()

    @property
    def reserved_blocks(self) -> int:
        return self.kv.reserved_blocks

    # ---- queue -------------------------------------------------------------------------------
    @property
    def num_waiting(self) -> int:
        return sum(len(q) for q in self._waiting.values()) + sum(len(p) for p in self._parked.values())

    def has_unfinished(self) -> bool:
        return bool(self.running) or self.num_waiting > 0

    def add_request(self, request: Request) -> None:
        self.add_requests([request])

    def add_requests(self, requests: Sequence[Request]) -> None:
        """Queue a batch: cluster it into prefix groups (if on) and order it once, globally."""
        groups: list[SharedPrefix] = []
        if self.config.prefix_clustering and len(requests) > 1:
            groups = build_prefix_groups(
                requests, self.block_size, self.config.min_shared_len, self.config.multi_level, self._next_group_id
            )
            self._next_group_id += len(groups)
            self.counters.prefix_groups += len(groups)
        for group in groups:  # a prefix runs as early as its most urgent member
            group.prefix_request.priority = min(m.priority for m in group.members)
        for request in order_requests(requests, groups, self.config.decode_first):
            request.rank = (request.priority, self._next_rank)
            self._next_rank += 1
            self._enqueue(request)

    def _enqueue(self, request: Request, front: bool = False) -> None:
        queue = self._waiting.setdefault(request.priority, deque())
        queue.appendleft(request) if front else queue.append(request)

    def _waiting_in_order(self):
        """Yield (queue, request) at the head of each priority, best priority first, until consumed."""
        for priority in sorted(self._waiting):
            queue = self._waiting[priority]
            while queue:
                yield queue, queue[0]

    # ---- preemption --------------------------------------------------------------------------
    def _preempt(self, request: Request, out: SchedulerOutput) -> None:
        self.running.remove(request)
        self.counters.preemptions += 1
        request.metrics.num_preemptions += 1
        if self._should_swap(request, len(request.block_ids) - request.num_shared_blocks):
            out.swap_out.extend(self.kv.swap_out(request))
            self.counters.swaps += 1
        else:
            self.kv.free(request)
            request.num_computed_tokens = 0
            self.counters.recomputes += 1
        request.status = RequestStatus.WAITING
        out.preempted.append(request)
        self._enqueue(request, front=True)

    def _should_swap(self, request: Request, num_private_blocks: int) -> bool:
        mode = self.config.preemption_mode
        if mode == "recompute" or not self.kv.can_swap_out(num_private_blocks):
            return False
        if request.reached_max_output:
            return False  # it finishes when its in-flight token arrives: its KV is not needed again
        if mode == "swap":
            return True
        recompute = self.costs.recompute_seconds(request.num_computed_tokens - request.num_shared_blocks * self.block_size)
        return self.costs.swap_seconds(num_private_blocks) < recompute

    def _evict_idle_group(self, keep: Optional[SharedPrefix]) -> bool:
        """Free the prefix KV of a group that no member uses yet (worst-ranked first); False if there is none.

        A computed prefix whose members have not started pins memory without progress; when nothing else can
        give way, dropping it is the only move that cannot deadlock. Its members then prefill their whole prompt.
        """
        idle = self.kv.idle_groups(keep)
        if not idle:
            return False
        self.counters.evicted_groups += 1
        self.kv.evict_group(max(idle, key=lambda g: g.prefix_request.rank))
        return True

    def _worst_running(self, exclude: set[int]) -> Optional[Request]:
        for request in reversed(self.running):
            if id(request) not in exclude:
                return request
        return None

    # ---- scheduling --------------------------------------------------------------------------
    def _chunk_size(self, request: Request, start: int, budget: int) -> int:
        remaining = request.num_tokens - start
        if remaining <= budget:
            return remaining
        return budget if self.config.enable_chunked_prefill else 0

    def _grow(self, request: Request, num_new: int, out: SchedulerOutput, scheduled: set[int]) -> bool:
        """Allocate blocks for the next chunk, preempting worse-ranked requests; False if `request` itself went."""
        while self.kv.allocate_slots(request, num_new) is None:
            victim = self._worst_running(scheduled | {id(request)})
            if victim is None or victim.rank < request.rank:
                if self._evict_idle_group(keep=request.group):
                    continue
                self._preempt(request, out)
                return False
            self._preempt(victim, out)
        return True

    def _priority_preemption(self, out: SchedulerOutput) -> None:
        """A waiting request of better priority than running ones takes their memory if it must."""
        if not self._waiting or not self.running:
            return
        best = min((p for p, q in self._waiting.items() if q), default=None)
        if best is None:
            return
        head = self._waiting[best][0]
        while self.running and self.running[-1].priority > head.priority and not self._fits(head):
            self._preempt(self.running[-1], out)

    def _fits(self, request: Request) -> bool:
        need = kv_blocks_needed(min(request.num_tokens, request.num_computed_tokens + self.config.max_num_batched_tokens),
                                self.block_size)
        if self.config.token_batching == "memory":
            limit = self.config.memory_threshold * self.pool.num_blocks
            return not self.kv.over_limit(request, limit) and need <= self.pool.num_free
        return need <= self.pool.num_free

    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        budget = self.config.max_num_batched_tokens
        self._priority_preemption(out)
        priority_preemptions = len(out.preempted)
        scheduled: set[int] = set()

        # A request whose last allowed token is still in flight stops when it arrives: nothing to run.
        decodes = [r for r in self.running if is_decode(r) and not r.reached_max_output]
        prefills = [r for r in self.running if r.num_computed_tokens < r.num_tokens - 1]
        for request in decodes + prefills:
            if budget == 0:
                break
            if request.status != RequestStatus.RUNNING:
                continue  # preempted earlier in this loop
            num_new = self._chunk_size(request, request.num_computed_tokens, budget)
            if num_new == 0 or not self._grow(request, num_new, out, scheduled):
                continue
            scheduled.add(id(request))
            out.chunks.append(ScheduledChunk(request, num_new))
            budget -= num_new

        if len(out.preempted) > priority_preemptions:
            return out  # memory is short already: admit nothing new this iteration
        self._admit(out, budget)
        return out

    def _admit(self, out: SchedulerOutput, budget: int) -> None:
        memory_mode = self.config.token_batching == "memory"
        limit = self.config.memory_threshold * self.pool.num_blocks
        max_seqs = None if memory_mode else self.config.max_num_seqs
        for queue, request in self._waiting_in_order():
            if budget == 0 or (max_seqs is not None and len(self.running) >= max_seqs):
                return
            group = request.group
            if group is not None and request.num_shared_blocks == 0 and request.swapped_blocks is None:
                if group.dead:
                    request.group = None  # its prefix KV is gone: compute the whole prompt itself
                elif not group.ready:
                    self._parked.setdefault(id(group), []).append(queue.popleft())
                    continue
            admitted = self._try_admit(request, budget, limit if memory_mode else None, out)
            if admitted is None:
                if self.running or out.chunks:
                    return  # head of line waits for memory
                if self._evict_idle_group(keep=request.group):
                    continue  # retry the same head with the freed blocks
                raise RuntimeError(f"request {request.request_id} cannot fit an empty KV cache (a bug: please report)")
            queue.popleft()
            budget -= admitted

    def _try_admit(self, request: Request, budget: int, limit: Optional[float], out: SchedulerOutput) -> Optional[int]:
        """Admit `request` if memory allows; returns the tokens scheduled for it (None: not admitted)."""
        busy_limit = limit if (self.running or out.chunks) else None  # the first request always fits the limit
        if request.swapped_blocks is not None:
            num_new = self._chunk_size(request, request.num_computed_tokens, budget)
            if num_new == 0:
                return None
            pairs = self.kv.swap_in(request, num_new, busy_limit)
            if pairs is None:
                return None
            out.swap_in.extend(pairs)
            return self._start_running(request, num_new, limit is not None, out)
        borrowed, cached, start = self.kv.reusable_prefix(request)
        num_new = self._chunk_size(request, start, budget)
        if num_new == 0 or not self.kv.allocate_admission(request, borrowed, cached, start, num_new, busy_limit):
            return None
        if cached and not borrowed:
            self.counters.cache_hit_tokens += start
        return self._start_running(request, num_new, limit is not None, out)

    def _start_running(self, request: Request, num_new: int, reserve: bool, out: SchedulerOutput) -> int:
        """Admission's last step: reserve its memory (memory-centric mode), run it, schedule its first chunk."""
        if reserve:
            self.kv.reserve(request)
        request.status = RequestStatus.RUNNING
        bisect.insort(self.running, request, key=lambda r: r.rank)
        out.chunks.append(ScheduledChunk(request, num_new))
        return num_new

    # ---- progress (this scheduler is its one owner) --------------------------------------------
    def on_launched(self, out: SchedulerOutput, sampled: list[ScheduledChunk], token_positions: list[int]) -> None:
        """The iteration was launched: its tokens count as computed, and every sampling chunk (row order)
        gets a PENDING_TOKEN that the host fills in when the token arrives."""
        for chunk in out.chunks:
            chunk.request.num_computed_tokens += chunk.num_new_tokens
        for row, chunk in enumerate(sampled):
            request = chunk.request
            token_positions.append(len(request.token_ids))
            request.token_ids.append(PENDING_TOKEN)
            request.pending_token_row = row

    def on_step_done(self, out: SchedulerOutput) -> None:
        """Called after the iteration ran (its launch recorded by on_launched)."""
        self.kv.step_done()
        for chunk in out.chunks:
            request = chunk.request
            if request.is_finished:
                continue  # stopped on a token that arrived after this iteration was launched
            self.kv.cache_computed_blocks(request)
            if request.is_prefix and request.num_computed_tokens == request.num_tokens:
                self._prefix_computed(request)

    def _prefix_computed(self, prefix_request: Request) -> None:
        self.running.remove(prefix_request)
        prefix_request.status = RequestStatus.FINISHED
        parked = self._parked.pop(id(prefix_request.computes_prefix_of), [])
        for member in reversed(parked):
            self._enqueue(member, front=True)
        self.kv.prefix_computed(prefix_request)

    def finish_request(self, request: Request) -> None:
        try:
            self.running.remove(request)
        except ValueError:
            # Preempted after its last token was sampled, before the token reached the host: it waits
            # in a queue (or parked), perhaps with its private KV swapped out.
            self._forget_waiting(request)
        self.kv.free(request)

    def _forget_waiting(self, request: Request) -> None:
        queue = self._waiting.get(request.priority)
        if queue is not None and request in queue:
            queue.remove(request)
        else:
            for parked in self._parked.values():
                if request in parked:
                    parked.remove(request)
                    break
        self.kv.free_swapped(request)
