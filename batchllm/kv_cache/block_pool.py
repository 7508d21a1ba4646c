"""Physical KV blocks: a free list plus reference counts, so blocks can be shared between requests.

With caching on (automatic prefix caching, the vLLM-like baseline), a block nobody holds keeps its
content and its hash in an LRU list; a later request with the same prefix takes it back, and allocation
evicts the least recently released such block when no plain free block is left.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from typing import Hashable, Optional, Sequence

import numpy as np


class BlockPool:
    """Hands out block ids; a block returns to the free list when its last holder releases it."""

    def __init__(self, num_blocks: int, enable_caching: bool = False) -> None:
        if num_blocks < 1:
            raise ValueError(f"num_blocks={num_blocks}: the KV pool needs at least one block")
        self.num_blocks = num_blocks
        self.enable_caching = enable_caching
        self._free: deque[int] = deque(range(num_blocks))
        self._ref_counts = np.zeros(num_blocks, dtype=np.int32)
        self._evictable: OrderedDict[int, None] = OrderedDict()  # cached blocks with ref 0, LRU first
        self._hash_to_block: dict[Hashable, int] = {}
        self._block_hash: dict[int, Hashable] = {}
        self.num_evictions = 0

    @property
    def num_free(self) -> int:
        """Blocks an allocation can take now (plain free + evictable cached)."""
        return len(self._free) + len(self._evictable)

    @property
    def num_used(self) -> int:
        return self.num_blocks - self.num_free

    @property
    def num_shared(self) -> int:
        """Blocks held by more than one holder."""
        return int((self._ref_counts > 1).sum())

    def ref_count(self, block_id: int) -> int:
        return int(self._ref_counts[block_id])

    def allocate(self, count: int) -> list[int]:
        """`count` fresh blocks with ref count 1; raises if the pool has fewer free (callers check first)."""
        if count > self.num_free:
            raise RuntimeError(f"asked for {count} KV blocks with only {self.num_free} free")
        blocks = []
        for _ in range(count):
            if self._free:
                blocks.append(self._free.popleft())
            else:
                block, _ = self._evictable.popitem(last=False)
                del self._hash_to_block[self._block_hash.pop(block)]
                self.num_evictions += 1
                blocks.append(block)
        self._ref_counts[blocks] = 1
        return blocks

    def share(self, blocks: Sequence[int]) -> None:
        """One more holder for each of these (already allocated) blocks."""
        if len(blocks) and (self._ref_counts[list(blocks)] <= 0).any():
            raise RuntimeError(f"sharing a free block among {list(blocks)}")
        np.add.at(self._ref_counts, list(blocks), 1)

    def release(self, blocks: Sequence[int]) -> None:
        """Drop one holder of each block; blocks nobody holds become free (or evictable if cached).

        Pass a request's blocks tail first: with caching, the tail of a prefix is then evicted before its head.
        """
        for block in blocks:
            count = self._ref_counts[block]
            if count <= 0:
                raise RuntimeError(f"double free of KV block {block}")
            self._ref_counts[block] = count - 1
            if count == 1:
                if block in self._block_hash:
                    self._evictable[block] = None
                else:
                    self._free.append(block)

    # ---- automatic prefix caching -------------------------------------------------------------
    def cache_block(self, block: int, block_hash: Hashable) -> None:
        """Remember that `block` (full, held) holds the KV of the prefix identified by `block_hash`."""
        if not self.enable_caching or block_hash in self._hash_to_block or block in self._block_hash:
            return
        self._hash_to_block[block_hash] = block
        self._block_hash[block] = block_hash

    def cached_prefix(self, block_hashes: Sequence[Hashable]) -> list[int]:
        """The blocks of the longest cached prefix of this hash chain (not yet acquired)."""
        blocks = []
        if self.enable_caching:
            for h in block_hashes:
                block: Optional[int] = self._hash_to_block.get(h)
                if block is None:
                    break
                blocks.append(block)
        return blocks

    def acquire_cached(self, blocks: Sequence[int]) -> None:
        """Take a holder's reference on cached blocks found by `cached_prefix` (reviving evictable ones)."""
        for block in blocks:
            if self._ref_counts[block] == 0:
                del self._evictable[block]
            self._ref_counts[block] += 1
