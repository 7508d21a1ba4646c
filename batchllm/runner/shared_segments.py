"""Find the prefix groups inside one iteration's batch and lay the batch out for the shared kernel.

Chunks are reordered (decodes first, then prefills; inside each, members of the same prefix group
chain next to each other) so every group's query tokens form one contiguous run; each run of two or
more members at some level of the group chain becomes a shared segment that attends that level's KV
once for all of them.
"""

from __future__ import annotations

from batchllm.attention.metadata import Segment
from batchllm.core.plan import ScheduledChunk
from batchllm.core.request import SharedPrefix


def group_chain(chunk: ScheduledChunk) -> list[SharedPrefix]:
    """Groups whose KV this chunk's request borrows, outermost first (empty if it borrows none)."""
    request = chunk.request
    chain: list[SharedPrefix] = []
    group = request.group if request.num_shared_blocks else None
    while group is not None:
        chain.append(group)
        group = group.parent
    return chain[::-1]


def order_for_sharing(chunks: list[ScheduledChunk]) -> list[ScheduledChunk]:
    """Decodes before prefills (the decode tiles of the kernels expect them first); group members adjacent."""
    if not any(c.request.num_shared_blocks for c in chunks):  # no group in the batch: a stable partition
        decodes = [c for c in chunks if c.is_decode]
        return decodes + [c for c in chunks if not c.is_decode] if len(decodes) < len(chunks) else decodes

    def key(chunk: ScheduledChunk):
        return (0 if chunk.is_decode else 1, tuple(g.group_id for g in group_chain(chunk)))

    return sorted(chunks, key=key)  # stable: rank order within a key


def plan_segments(
    chunks: list[ScheduledChunk], query_start: list[int], block_size: int
) -> tuple[list[Segment], list[int]]:
    """Shared segments over `chunks` (already ordered) and each sequence's distinct KV start."""
    chains = [group_chain(c) for c in chunks]
    distinct_start = [0] * len(chunks)
    segments: list[Segment] = []
    depth = max((len(c) for c in chains), default=0)
    for level in range(depth):
        i = 0
        while i < len(chunks):
            if len(chains[i]) <= level:
                i += 1
                continue
            group = chains[i][level]
            j = i + 1
            while j < len(chunks) and len(chains[j]) > level and chains[j][level] is group:
                j += 1
            if j - i >= 2:  # a lone member gains nothing from a shared pass
                parent = group.parent
                kv_start = parent.prefix_len if parent is not None else 0
                blocks = chunks[i].request.block_ids[: group.prefix_len // block_size]
                segments.append(Segment(query_start[i], query_start[j], kv_start, group.prefix_len, level, blocks))
                for k in range(i, j):
                    distinct_start[k] = group.prefix_len
            i = j
    return segments, distinct_start

