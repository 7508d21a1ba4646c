"""Physical KV blocks: a free list plus reference counts, so blocks can be shared between requests."""

from __future__ import annotations

from collections import deque

import numpy as np


class BlockPool:
    """Hands out block ids; a block returns to the free list when its last holder releases it."""

    def __init__(self, num_blocks: int) -> None:
        if num_blocks < 1:
            raise ValueError(f"num_blocks={num_blocks}: the KV pool needs at least one block")
        self.num_blocks = num_blocks
        self._free: deque[int] = deque(range(num_blocks))
        self._ref_counts = np.zeros(num_blocks, dtype=np.int32)

    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def num_used(self) -> int:
        return self.num_blocks - len(self._free)

    def ref_count(self, block_id: int) -> int:
        return int(self._ref_counts[block_id])

    def allocate(self, count: int) -> list[int]:
        """`count` fresh blocks with ref count 1; raises if the pool has fewer free (callers check first)."""
        if count > len(self._free):
            raise RuntimeError(f"asked for {count} KV blocks with only {len(self._free)} free")
        blocks = [self._free.popleft() for _ in range(count)]
        self._ref_counts[blocks] = 1
        return blocks

    def share(self, blocks: list[int]) -> None:
        """One more holder for each of these (already allocated) blocks."""
        if blocks and (self._ref_counts[blocks] <= 0).any():
            raise RuntimeError(f"sharing a free block among {blocks}")
        np.add.at(self._ref_counts, blocks, 1)

    def release(self, blocks: list[int]) -> None:
        """Drop one holder of each block; blocks nobody holds go back to the free list."""
        for block in blocks:
            count = self._ref_counts[block]
            if count <= 0:
                raise RuntimeError(f"double free of KV block {block}")
            self._ref_counts[block] = count - 1
            if count == 1:
                self._free.append(block)
