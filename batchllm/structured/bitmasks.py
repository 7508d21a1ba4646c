"""One step's token bitmask for the constrained rows, filled on the host and applied on the logits' device;
and the matchers' token acceptance, spread over threads.

xgrammar releases the GIL while it fills masks or accepts tokens (measured on this project's CPU box: a
Python loop beside five 512-row fills ran at full speed), so both run in worker threads: the fill beside
the engine's scheduling, the accepts side by side. One token accepted costs 10-20 us in a JSON string;
1000 rows of it, serially, would be a decode step's worth of host time.
"""

from __future__ import annotations

import os
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch

# Below this many rows, threads cost more than they save (a 512-row accept took 9 us a row on 2 threads
# against 18 us on one; a handful of rows is faster inline).
_MIN_ROWS_FOR_THREADS = 64

ACCEPTED, COMPLETE, REJECTED = 0, 1, 2  # what a matcher did with a token


@dataclass
class StepBitmask:
    """Rows (indices into the step's sampled rows) and their packed allowed-token bits (int32, on device)."""

    rows: list[int]
    bits: torch.Tensor


class PendingBitmask:
    """A step's mask being filled in a worker thread; ``result`` waits for it and sends it to the device."""

    def __init__(self, future: Future, rows: list[int], host_bits: torch.Tensor, device: torch.device) -> None:
        self._future, self._rows, self._host_bits, self._device = future, rows, host_bits, device

    def result(self) -> StepBitmask:
        self._future.result()  # re-raises the fill's error, if any
        return StepBitmask(self._rows, _to_device(self._host_bits, self._device))

    def wait(self) -> None:
        """Let the fill end (its matchers may be dropped next), ignoring its outcome."""
        self._future.exception()


def _to_device(bits: torch.Tensor, device: torch.device) -> torch.Tensor:
    if device.type == "cuda":
        # The buffer is pinned: an asynchronous copy. The next fill writes it only after the engine has
        # received the tokens sampled with this mask, so the copy has finished by then.
        return bits.to(device, non_blocking=True)
    return bits.clone()  # the buffer is refilled next step


class BitmaskFiller:
    """Fills bitmask rows for many matchers at once (xgrammar's batch matcher uses several threads), in
    a persistent host buffer (pinned when the logits are on a GPU), and accepts tokens in parallel."""

    def __init__(self, vocab_size: int, max_threads: int = min(8, os.cpu_count() or 1)) -> None:
        import xgrammar

        self.xgr = xgrammar
        self.vocab_size = vocab_size
        self.max_threads = max_threads
        self.batch = xgrammar.BatchGrammarMatcher(max_threads=max_threads)
        self._buffer: Optional[torch.Tensor] = None
        self._pool: Optional[ThreadPoolExecutor] = None

    @property
    def pool(self) -> ThreadPoolExecutor:
        if self._pool is None:
            # One thread more than the accept chunks: the background fill keeps a thread of its own.
            self._pool = ThreadPoolExecutor(self.max_threads + 1, thread_name_prefix="batchllm-grammar")
        return self._pool

    def _host_bits(self, num_rows: int, device: torch.device) -> torch.Tensor:
        if self._buffer is None or self._buffer.shape[0] < num_rows:
            words = (self.vocab_size + 31) // 32
            pin = device.type == "cuda" and torch.cuda.is_available()
            self._buffer = torch.full((max(2 * num_rows, 256), words), -1, dtype=torch.int32, pin_memory=pin)
        return self._buffer[:num_rows]

    def fill(self, matchers: Sequence[Any], rows: Sequence[int], num_rows: int, device: torch.device
             ) -> Optional[StepBitmask]:
        """The masks of ``matchers`` at ``rows`` of a step with ``num_rows`` sampled rows (xgrammar indexes
        logits and mask rows alike), or None when there is nothing to mask."""
        if not matchers:
            return None
        bits = self._host_bits(num_rows, device)
        self.batch.batch_fill_next_token_bitmask(list(matchers), bits, indices=list(rows))
        return StepBitmask(list(rows), _to_device(bits, device))

    def start_fill(self, matchers: Sequence[Any], rows: Sequence[int], num_rows: int, device: torch.device
                   ) -> PendingBitmask:
        """``fill`` in a worker thread; the caller must not advance these matchers before ``result``."""
        bits = self._host_bits(num_rows, device)
        future = self.pool.submit(self.batch.batch_fill_next_token_bitmask, list(matchers), bits, list(rows))
        return PendingBitmask(future, list(rows), bits, device)

    def accept(self, matchers: Sequence[Any], tokens: Sequence[int]) -> list[int]:
        """Advance each matcher by its token: ACCEPTED, COMPLETE (the constraint is satisfied and ends)
        or REJECTED, per matcher."""
        n = len(matchers)
        if n < _MIN_ROWS_FOR_THREADS:
            return _accept_slice(matchers, tokens)
        step = -(-n // self.max_threads)
        parts = self.pool.map(_accept_slice, [matchers[i:i + step] for i in range(0, n, step)],
                              [tokens[i:i + step] for i in range(0, n, step)])
        return [state for part in parts for state in part]


def _accept_slice(matchers: Sequence[Any], tokens: Sequence[int]) -> list[int]:
    states = []
    for matcher, token in zip(matchers, tokens):
        if not matcher.accept_token(token):
            states.append(REJECTED)
        else:
            states.append(COMPLETE if matcher.is_terminated() else ACCEPTED)
    return states


def apply_bitmask(logits: torch.Tensor, mask: StepBitmask) -> None:
    """Set the logits of disallowed tokens to -inf in the masked rows (xgrammar's kernel for the device)."""
    import xgrammar

    xgrammar.apply_token_bitmask_inplace(logits, mask.bits, vocab_size=logits.shape[-1], indices=mask.rows)
