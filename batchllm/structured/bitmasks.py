"""One step's token bitmask for the constrained rows, filled on the host and applied on the logits' device."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch


@dataclass
class StepBitmask:
    """Rows (indices into the step's sampled rows) and their packed allowed-token bits (int32, on device)."""

    rows: list[int]
    bits: torch.Tensor


class BitmaskFiller:
    """Fills bitmask rows for many matchers at once (xgrammar's batch matcher uses several threads)."""

    def __init__(self, vocab_size: int, max_threads: int = min(8, os.cpu_count() or 1)) -> None:
        import xgrammar

        self.xgr = xgrammar
        self.vocab_size = vocab_size
        self.batch = xgrammar.BatchGrammarMatcher(max_threads=max_threads)
        self._buffer = xgrammar.allocate_token_bitmask(256, vocab_size)

    def fill(self, matchers: Sequence[Any], rows: Sequence[int], num_rows: int, device: torch.device
             ) -> Optional[StepBitmask]:
        """The masks of ``matchers`` at ``rows`` of a step with ``num_rows`` sampled rows (xgrammar indexes
        logits and mask rows alike), or None when there is nothing to mask."""
        if not matchers:
            return None
        if self._buffer.shape[0] < num_rows:
            self._buffer = self.xgr.allocate_token_bitmask(2 * num_rows, self.vocab_size)
        bits = self._buffer[:num_rows]
        self.batch.batch_fill_next_token_bitmask(list(matchers), bits, indices=list(rows))
        if device.type == "cuda":
            bits = bits.pin_memory().to(device, non_blocking=True)
        else:
            bits = bits.clone()  # the buffer is refilled next step
        return StepBitmask(list(rows), bits)


def apply_bitmask(logits: torch.Tensor, mask: StepBitmask) -> None:
    """Set the logits of disallowed tokens to -inf in the masked rows (xgrammar's kernel for the device)."""
    import xgrammar

    xgrammar.apply_token_bitmask_inplace(logits, mask.bits, vocab_size=logits.shape[-1], indices=mask.rows)
