"""What an attention backend needs to know about one iteration's batch (paged KV layout)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Hashable, Optional

import torch

from batchllm.host_to_device import to_device


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
    # Launch plans a backend derived from this batch's host copies, under keys of the backend's own
    # (one metadata object per batch: every layer of a forward pass reuses them; a CUDA graph pins its own).
    launch_plans: dict[Hashable, object] = field(default_factory=dict, repr=False, compare=False)

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


def fresh_prefill_metadata(
    q_lens: list[int], block_size: int, device: torch.device
) -> tuple[AttentionMetadata, torch.Tensor, int]:  # fmt: skip
    """Sequences prefilled whole from position 0, each in its own contiguous run of blocks (sequence i in
    blocks [i * n, (i + 1) * n), n = blocks of the longest): (metadata, positions [sum q_lens], blocks used).
    For single passes outside the scheduler (peak-memory profiling, teacher-forced scoring)."""
    per_seq = -(-max(q_lens) // block_size)
    starts = [0]
    for q in q_lens:
        starts.append(starts[-1] + q)
    block_tables = torch.arange(len(q_lens) * per_seq, dtype=torch.int32, device=device).view(len(q_lens), -1)
    positions = torch.cat([torch.arange(q, device=device) for q in q_lens])
    seq_index = torch.repeat_interleave(torch.arange(len(q_lens), device=device), torch.tensor(q_lens, device=device))
    slots = block_tables[seq_index, positions // block_size].long() * block_size + positions % block_size
    meta = AttentionMetadata(
        query_start_loc=torch.tensor(starts, dtype=torch.int32, device=device),
        seq_lens=torch.tensor(q_lens, dtype=torch.int32, device=device),
        block_tables=block_tables, slot_mapping=slots, max_query_len=max(q_lens), max_seq_len=max(q_lens),
        query_start_loc_cpu=starts, seq_lens_cpu=list(q_lens),
    )  # fmt: skip
    return meta, positions, len(q_lens) * per_seq


def max_decode_segments(batch_size: int, num_levels: int) -> int:
    """Segments a pure-decode batch can have: every segment has >= 2 members, a level's are disjoint."""
    return num_levels * (batch_size // 2)


@dataclass
class Segment:
    """Host description of one shared segment (see `SharedPrefixMetadata`)."""

    q_start: int
    q_end: int
    kv_start: int
    kv_end: int
    level: int
    block_table: list[int]  # physical blocks of positions [0, kv_end) (ancestors' blocks included)


def build_shared_prefix_metadata(
    segments: list[Segment], distinct_kv_start: list[int], device: torch.device | str
) -> SharedPrefixMetadata:
    """SharedPrefixMetadata (device tensors + host copies) from host-side segment descriptions."""
    max_blocks = max([len(s.block_table) for s in segments] + [1])
    tables = torch.zeros(len(segments), max_blocks, dtype=torch.int32)
    for i, s in enumerate(segments):
        tables[i, : len(s.block_table)] = torch.tensor(s.block_table, dtype=torch.int32)
    cols = {
        name: [getattr(s, name) for s in segments] for name in ("q_start", "q_end", "kv_start", "kv_end", "level")
    }

    def dev(xs: list[int]) -> torch.Tensor:
        return to_device(xs, torch.int32, device)

    return SharedPrefixMetadata(
        seg_q_start=dev(cols["q_start"]),
        seg_q_end=dev(cols["q_end"]),
        seg_kv_start=dev(cols["kv_start"]),
        seg_kv_end=dev(cols["kv_end"]),
        seg_level=dev(cols["level"]),
        seg_block_tables=to_device(tables, torch.int32, device),
        distinct_kv_start=dev(distinct_kv_start),
        num_levels=max(cols["level"], default=-1) + 1,
        seg_q_start_cpu=cols["q_start"],
        seg_q_end_cpu=cols["q_end"],
        seg_kv_start_cpu=cols["kv_start"],
        seg_kv_end_cpu=cols["kv_end"],
        seg_level_cpu=cols["level"],
        distinct_kv_start_cpu=list(distinct_kv_start),
    )
