"""What an attention backend needs to know about one iteration's batch (paged KV layout)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


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

    @property
    def num_seqs(self) -> int:
        return len(self.seq_lens_cpu)

    @property
    def is_pure_decode(self) -> bool:
        return self.max_query_len == 1
