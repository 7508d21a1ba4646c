"""What every scheduling policy provides to the engine loop."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from batchllm.engine.request import Request


@dataclass
class ScheduledChunk:
    """`num_new_tokens` tokens of `request`, starting at its num_computed_tokens, run this iteration."""

    request: Request
    num_new_tokens: int

    @property
    def completes_sequence(self) -> bool:
        """True when this chunk reaches the last known token of a decoding request: a next token is sampled."""
        request = self.request
        return request.num_computed_tokens + self.num_new_tokens == request.num_tokens and not request.is_prefix


@dataclass
class SchedulerOutput:
    chunks: list[ScheduledChunk] = field(default_factory=list)
    preempted: list[Request] = field(default_factory=list)
    swap_out: list[tuple[int, int]] = field(default_factory=list)  # (device block, host block), before the forward
    swap_in: list[tuple[int, int]] = field(default_factory=list)  # (host block, device block), after swap_out

    @property
    def num_tokens(self) -> int:
        return sum(c.num_new_tokens for c in self.chunks)


class Scheduler(Protocol):
    def add_requests(self, requests: list[Request]) -> None:
        """Queue a batch (analysed and ordered as a whole)."""
        ...

    def schedule(self) -> SchedulerOutput:
        """Pick this iteration's work; allocates the KV blocks it needs (preempting if it must)."""
        ...

    def on_step_done(self, out: SchedulerOutput) -> None:
        """Bookkeeping after the iteration ran (prefixes computed, blocks cached, host blocks freed)."""
        ...

    def finish_request(self, request: Request) -> None:
        """Release a finished request's blocks and forget it."""
        ...

    def has_unfinished(self) -> bool: ...
