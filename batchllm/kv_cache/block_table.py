"""Block arithmetic for one request: how many blocks its tokens need."""

from __future__ import annotations


def kv_blocks_needed(num_tokens: int, block_size: int) -> int:
    return (num_tokens + block_size - 1) // block_size
