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
        """True when this chunk reaches the last known token, so the iteration samples a next token."""
        return self.request.num_computed_tokens + self.num_new_tokens == self.request.num_tokens


@dataclass
class SchedulerOutput:
    chunks: list[ScheduledChunk] = field(default_factory=list)
    preempted: list[Request] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return sum(c.num_new_tokens for c in self.chunks)


class Scheduler(Protocol):
    def add_request(self, request: Request) -> None: ...

    def schedule(self) -> SchedulerOutput:
        """Pick this iteration's work; allocates the KV blocks it needs (preempting if it must)."""
        ...

    def finish_request(self, request: Request) -> None:
        """Release a finished request's blocks and forget it."""
        ...

    def has_unfinished(self) -> bool: ...
