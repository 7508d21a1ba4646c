"""First-come-first-served continuous batching with chunked prefill and preemption by recompute.

Each iteration: running requests first (decodes and unfinished prefill chunks, in arrival order),
then waiting requests while the token budget, the sequence cap and free KV blocks allow. When a
running request needs a block and none is free, the latest-arrived running request is preempted:
its blocks are freed and it is re-queued at the front to recompute its KV later.
"""

from __future__ import annotations

from collections import deque

from batchllm.config import SchedulerConfig
from batchllm.engine.request import Request, RequestStatus
from batchllm.kv_cache.block_pool import BlockPool
from batchllm.kv_cache.block_table import kv_blocks_needed
from batchllm.scheduler.interface import ScheduledChunk, SchedulerOutput


class FCFSScheduler:
    def __init__(self, config: SchedulerConfig, pool: BlockPool, block_size: int) -> None:
        self.config = config
        self.pool = pool
        self.block_size = block_size
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.num_preemptions = 0

    def add_request(self, request: Request) -> None:
        self.waiting.append(request)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def _grow(self, request: Request, num_new_tokens: int) -> bool:
        """Allocate the blocks `request` needs for its next chunk; False if the pool is short."""
        need = kv_blocks_needed(request.num_computed_tokens + num_new_tokens, self.block_size) - len(request.block_ids)
        if need > self.pool.num_free:
            return False
        if need > 0:
            request.block_ids.extend(self.pool.allocate(need))
        return True

    def _preempt(self, request: Request, out: SchedulerOutput) -> None:
        self.pool.release(request.block_ids)
        request.block_ids = []
        request.num_computed_tokens = 0
        request.status = RequestStatus.WAITING
        request.metrics.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(request)
        out.preempted.append(request)

    def _chunk_size(self, request: Request, budget: int) -> int:
        remaining = request.num_tokens - request.num_computed_tokens
        if remaining <= budget:
            return remaining
        return budget if self.config.enable_chunked_prefill else 0

    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        budget = self.config.max_num_batched_tokens
        scheduled_running: list[Request] = []
        while self.running and budget > 0:
            request = self.running.pop(0)
            num_new = self._chunk_size(request, budget)
            if num_new == 0:
                self.running.insert(0, request)
                break
            while not self._grow(request, num_new):
                if self.running:
                    self._preempt(self.running.pop(), out)  # latest arrival gives way
                else:
                    self._preempt(request, out)
                    break
            if request.status == RequestStatus.WAITING:
                break
            scheduled_running.append(request)
            out.chunks.append(ScheduledChunk(request, num_new))
            budget -= num_new
        self.running = scheduled_running + self.running

        if out.preempted:
            return out  # memory is tight: do not admit new work this iteration
        max_seqs = self.config.max_num_seqs
        while self.waiting and budget > 0 and (max_seqs is None or len(self.running) < max_seqs):
            request = self.waiting[0]
            num_new = self._chunk_size(request, budget)
            if num_new == 0 or not self._grow(request, num_new):
                break
            self.waiting.popleft()
            request.status = RequestStatus.RUNNING
            self.running.append(request)
            out.chunks.append(ScheduledChunk(request, num_new))
            budget -= num_new
        return out

    def finish_request(self, request: Request) -> None:
        self.running.remove(request)
        self.pool.release(request.block_ids)
        request.block_ids = []
