"""Hash chain of a request's full KV blocks, the key of automatic prefix caching.

Block i's hash covers its tokens and (through block i-1's hash) everything before them, so equal hashes
mean equal prefixes, as in vLLM's automatic prefix caching.
"""

from __future__ import annotations

from batchllm.core.request import Request


def extend_block_hashes(request: Request, block_size: int, num_full_blocks: int) -> None:
    """Make request.block_hashes cover its first `num_full_blocks` blocks (all of them full of known tokens)."""
    hashes = request.block_hashes
    tokens = request.token_ids
    num_full_blocks = min(num_full_blocks, len(tokens) // block_size)
    for i in range(len(hashes), num_full_blocks):
        parent = hashes[i - 1] if i else None
        hashes.append(hash((parent, tuple(tokens[i * block_size : (i + 1) * block_size]))))
