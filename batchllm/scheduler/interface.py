"""What every scheduling policy provides to the engine loop."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from batchllm.core.plan import ScheduledChunk, SchedulerOutput
from batchllm.core.request import Request


@dataclass
class SchedulerCounters:
    """What a scheduler counts over its life (kept across LLMEngine.abort_all)."""

    preemptions: int = 0
    swaps: int = 0
    recomputes: int = 0
    prefix_groups: int = 0
    cache_hit_tokens: int = 0
    evicted_groups: int = 0  # prefix KV dropped before its members started (memory deadlock avoided)


class Scheduler(Protocol):
    counters: SchedulerCounters

    def add_requests(self, requests: list[Request]) -> None:
        """Queue a batch (analysed and ordered as a whole)."""
        ...

    def schedule(self) -> SchedulerOutput:
        """Pick this iteration's work; allocates the KV blocks it needs (preempting if it must)."""
        ...

    def on_launched(self, out: SchedulerOutput, sampled: list[ScheduledChunk], token_positions: list[int]) -> None:
        """The iteration was launched: advance its requests' progress, and give every chunk in `sampled`
        (row order) a PENDING_TOKEN, whose index in its request goes to `token_positions`."""
        ...

    def on_step_done(self, out: SchedulerOutput) -> None:
        """Bookkeeping after the iteration ran (prefixes computed, blocks cached, host blocks freed)."""
        ...

    def finish_request(self, request: Request) -> None:
        """Release a finished request's blocks and forget it."""
        ...

    def has_unfinished(self) -> bool: ...

    @property
    def num_waiting(self) -> int:
        """Requests queued but not admitted (waiting, or parked behind their prefix)."""
        ...
