"""Turn a scheduler decision into the flat tensors of one forward pass (vectorised per request)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from batchllm.attention.metadata import AttentionMetadata
from batchllm.attention.shared_prefix_reference import build_shared_prefix_metadata
from batchllm.runner.shared_segments import plan_segments
from batchllm.scheduler.interface import ScheduledChunk


@dataclass
class ModelInputs:
    input_ids: torch.Tensor
    positions: torch.Tensor
    meta: AttentionMetadata
    logits_indices: torch.Tensor
    sampled_chunks: list[ScheduledChunk]  # chunks whose last token gets a next-token sample, in logits order


def prepare_inputs(
    chunks: list[ScheduledChunk], block_size: int, device: torch.device, shared_prefix: bool = False
) -> ModelInputs:
    """Flat inputs of one iteration; with shared_prefix, also the shared segments of the prefix groups in it."""
    num_seqs = len(chunks)
    q_lens = np.fromiter((c.num_new_tokens for c in chunks), dtype=np.int64, count=num_seqs)
    starts = np.fromiter((c.request.num_computed_tokens for c in chunks), dtype=np.int64, count=num_seqs)
    seq_lens = starts + q_lens
    query_start_loc = np.zeros(num_seqs + 1, dtype=np.int64)
    np.cumsum(q_lens, out=query_start_loc[1:])
    total = int(query_start_loc[-1])

    flat_tokens: list[int] = []
    for chunk, start, n in zip(chunks, starts.tolist(), q_lens.tolist()):
        flat_tokens.extend(chunk.request.token_ids[start : start + n])
    token_ids = np.array(flat_tokens, dtype=np.int64)
    # position of every token: its sequence's start offset plus its index within the chunk
    seq_of_token = np.repeat(np.arange(num_seqs), q_lens)
    positions = starts[seq_of_token] + (np.arange(total) - query_start_loc[:-1][seq_of_token])

    rows = [c.request.block_table_array() for c in chunks]
    block_tables = np.zeros((num_seqs, max(len(r) for r in rows)), dtype=np.int32)
    for row, blocks in enumerate(rows):
        block_tables[row, : len(blocks)] = blocks
    slot_mapping = block_tables[seq_of_token, positions // block_size].astype(np.int64) * block_size + positions % block_size

    sampled = [i for i, c in enumerate(chunks) if c.completes_sequence]
    logits_indices = query_start_loc[1:][sampled] - 1

    def to_dev(array: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
        return torch.from_numpy(array).to(dtype).to(device, non_blocking=True)

    meta = AttentionMetadata(
        query_start_loc=to_dev(query_start_loc, torch.int32),
        seq_lens=to_dev(seq_lens, torch.int32),
        block_tables=to_dev(block_tables, torch.int32),
        slot_mapping=to_dev(slot_mapping, torch.int64),
        max_query_len=int(q_lens.max()),
        max_seq_len=int(seq_lens.max()),
        query_start_loc_cpu=query_start_loc.tolist(),
        seq_lens_cpu=seq_lens.tolist(),
    )
    if shared_prefix:
        segments, distinct_start = plan_segments(chunks, meta.query_start_loc_cpu, block_size)
        if segments:
            meta.shared = build_shared_prefix_metadata(segments, distinct_start, device)
    return ModelInputs(
        input_ids=to_dev(token_ids, torch.int64),
        positions=to_dev(positions, torch.int64),
        meta=meta,
        logits_indices=to_dev(logits_indices, torch.int64),
        sampled_chunks=[chunks[i] for i in sampled],
    )
