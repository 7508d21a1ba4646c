"""What an attention backend needs to know about one iteration's batch (paged KV layout)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch


@dataclass
class SharedPrefixMetadata:
    """Shared KV segments attended by contiguous runs of query tokens (prefix groups in the batch).

    Segment s: query tokens [seg_q_start[s], seg_q_end[s]) of the flat batch (the members of one prefix
    group, placed next to each other) all attend the KV tokens [seg_kv_start[s], seg_kv_end[s]) of the
    block list seg_block_tables[s] (positions are absolute within that list, block-aligned). Every member's
    queries sit after the whole segment, so the shared part needs no causal mask. With multi-level sharing a
    query token is covered by up to num_levels segments (level = seg_level[s], 0 = outermost); segments of
    one level never overlap. Each sequence's own ("distinct") part starts at KV position distinct_kv_start[b]
    (= the end of its deepest segment, 0 if none) and is attended as usual, causally.
    """

    seg_q_start: torch.Tensor  # [S] int32
    seg_q_end: torch.Tensor  # [S] int32
    seg_kv_start: torch.Tensor  # [S] int32
    seg_kv_end: torch.Tensor  # [S] int32
    seg_level: torch.Tensor  # [S] int32
    seg_block_tables: torch.Tensor  # [S, max_seg_blocks] int32
    distinct_kv_start: torch.Tensor  # [B] int32
    num_levels: int
    # host copies
    seg_q_start_cpu: list[int]
    seg_q_end_cpu: list[int]
    seg_kv_start_cpu: list[int]
    seg_kv_end_cpu: list[int]
    seg_level_cpu: list[int]
    distinct_kv_start_cpu: list[int]

    @property
    def num_segments(self) -> int:
        return len(self.seg_q_start_cpu)


@dataclass
class AttentionMetadata:
    """Flattened batch of B sequences, each contributing query tokens at the end of its context.

    KV cache layout per layer: [num_blocks, block_size, num_kv_heads, head_dim].
    query_start_loc: [B+1] int32, offsets of each sequence's query tokens in the flat batch.
    seq_lens: [B] int32, context length of each sequence *including* this iteration's tokens.
    block_tables: [B, max_blocks] int32, physical block ids of each sequence (padding: 0).
    slot_mapping: [T] int64, flat KV slot (block * block_size + offset) each new token is written to.
    max_query_len / max_seq_len: host-side maxima (kernels use them for grid sizes).
    """

    query_start_loc: torch.Tensor
    seq_lens: torch.Tensor
    block_tables: torch.Tensor
    slot_mapping: torch.Tensor
    max_query_len: int
    max_seq_len: int
    # Host copies, so the reference backend and Python code never sync on the GPU.
    query_start_loc_cpu: list[int]
    seq_lens_cpu: list[int]
    # Prefix groups present in this batch (None: no sharing worth a shared pass; plain paged attention).
    shared: Optional[SharedPrefixMetadata] = None

    @property
    def num_seqs(self) -> int:
        return len(self.seq_lens_cpu)

    @property
    def is_pure_decode(self) -> bool:
        return self.max_query_len == 1
