"""One iteration's plan: which requests run how many tokens, and the KV copies to do around it."""

from __future__ import annotations

from dataclasses import dataclass, field

from batchllm.core.request import Request


def is_decode(request: Request) -> bool:
    """Exactly one token left to run (a decode step, or a prompt's last token): it runs as a one-token query."""
    return request.num_computed_tokens == len(request.token_ids) - 1  # len(): on the per-iteration path


@dataclass
class ScheduledChunk:
    """`num_new_tokens` tokens of `request`, starting at its num_computed_tokens, run this iteration."""

    request: Request
    num_new_tokens: int

    @property
    def is_decode(self) -> bool:
        """A one-token step (valid until the scheduler records the launch and progress moves on)."""
        return self.num_new_tokens == 1 and is_decode(self.request)

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

    @property
    def num_tokens_past_prompt(self) -> int:
        """Tokens of chunks that start past their request's prompt: output (or recomputed output) work."""
        count = 0
        for chunk in self.chunks:  # a plain loop: this runs every iteration
            request = chunk.request
            if request.num_computed_tokens >= request.num_prompt_tokens:
                count += chunk.num_new_tokens
        return count
