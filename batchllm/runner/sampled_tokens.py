"""Tokens sampled by a launched iteration, on their way to the host while the GPU runs on."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch

from batchllm.core.plan import ScheduledChunk
from batchllm.runner.logits_processors import SampledLogprobs


@dataclass
class SampledTokens:
    chunks: list[ScheduledChunk]  # the chunks that sampled a token, in row order
    on_device: torch.Tensor  # the next iteration takes its not-yet-known input tokens from here
    tokens_host: torch.Tensor
    logprobs_host: Optional[torch.Tensor]
    copied: Optional[torch.cuda.Event]  # None on CPU, where the copy is done when it returns
    token_positions: list[int] = field(default_factory=list)  # where each row's token goes in its request (engine)
    # the k most likely tokens of each row and their logprobs ([rows, k], best first), when a row asked
    top_ids_host: Optional[torch.Tensor] = None
    top_logprobs_host: Optional[torch.Tensor] = None

    @classmethod
    def start_copy(
        cls, chunks: list[ScheduledChunk], tokens: torch.Tensor, logprobs: Optional[SampledLogprobs]
    ) -> "SampledTokens":
        """Queue the device-to-host copies behind the iteration's kernels; nothing waits for them here."""
        top_ids = logprobs.top_ids if logprobs is not None else None
        top_logprobs = logprobs.top_logprobs if logprobs is not None else None
        chosen = logprobs.chosen if logprobs is not None else None
        if tokens.device.type != "cuda":
            return cls(chunks, tokens, tokens, chosen, None, top_ids_host=top_ids, top_logprobs_host=top_logprobs)

        def to_pinned(tensor: torch.Tensor) -> torch.Tensor:
            return torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True).copy_(tensor, non_blocking=True)

        tokens_host = to_pinned(tokens)
        logprobs_host = to_pinned(chosen) if chosen is not None else None
        top_ids_host = to_pinned(top_ids) if top_ids is not None else None
        top_logprobs_host = to_pinned(top_logprobs) if top_logprobs is not None else None
        copied = torch.cuda.Event()
        copied.record()
        return cls(chunks, tokens, tokens_host, logprobs_host, copied, top_ids_host=top_ids_host,
                   top_logprobs_host=top_logprobs_host)

    def to_host(self) -> tuple[list[int], Optional[list[float]]]:
        """Wait for the copies (the GPU goes on with whatever was launched after them); tokens, logprobs."""
        if self.copied is not None:
            self.copied.synchronize()
        logprobs = self.logprobs_host.tolist() if self.logprobs_host is not None else None
        return self.tokens_host.tolist(), logprobs

    def top_logprobs_to_host(self) -> Optional[tuple[list[list[int]], list[list[float]]]]:
        """The rows' k most likely token ids and their logprobs (after ``to_host``), or None if nobody asked."""
        if self.top_ids_host is None or self.top_logprobs_host is None:
            return None
        return self.top_ids_host.tolist(), self.top_logprobs_host.tolist()
