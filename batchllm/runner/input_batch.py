"""Turn a scheduler decision into the flat tensors of one forward pass (vectorised per request)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from batchllm.attention.metadata import AttentionMetadata, build_shared_prefix_metadata
from batchllm.core.plan import ScheduledChunk
from batchllm.core.request import PENDING_TOKEN
from batchllm.host_to_device import to_device
from batchllm.runner.shared_segments import plan_segments


@dataclass
class ModelInputs:
    input_ids: torch.Tensor
    positions: torch.Tensor
    meta: AttentionMetadata
    logits_indices: torch.Tensor
    sampled_chunks: list[ScheduledChunk]  # chunks whose last token gets a next-token sample, in logits order


def prepare_inputs(
    chunks: list[ScheduledChunk],
    block_size: int,
    device: torch.device,
    shared_prefix: bool = False,
    pending_tokens: Optional[torch.Tensor] = None,
) -> ModelInputs:
    """Flat inputs of one iteration; with shared_prefix, also the shared segments of the prefix groups in it.

    A request's last token may still be PENDING_TOKEN: sampled by the iteration in flight, row
    `request.pending_token_row` of `pending_tokens`, which the input ids take on the device.
    """
    num_seqs = len(chunks)
    q_lens = np.fromiter((c.num_new_tokens for c in chunks), dtype=np.int64, count=num_seqs)
    starts = np.fromiter((c.request.num_computed_tokens for c in chunks), dtype=np.int64, count=num_seqs)
    seq_lens = starts + q_lens
    query_start_loc = np.zeros(num_seqs + 1, dtype=np.int64)
    np.cumsum(q_lens, out=query_start_loc[1:])
    total = int(query_start_loc[-1])

    flat_tokens: list[int] = []
    pending_at: list[int] = []  # flat index of each input still on the device, and its row there
    pending_rows: list[int] = []
    for chunk, start, n in zip(chunks, starts.tolist(), q_lens.tolist()):
        request_tokens = chunk.request.token_ids
        flat_tokens.extend(request_tokens[start : start + n])
        if request_tokens[-1] == PENDING_TOKEN and start + n == len(request_tokens):
            pending_at.append(len(flat_tokens) - 1)
            pending_rows.append(chunk.request.pending_token_row)
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

    meta = AttentionMetadata(
        query_start_loc=to_device(query_start_loc, torch.int32, device),
        seq_lens=to_device(seq_lens, torch.int32, device),
        block_tables=to_device(block_tables, torch.int32, device),
        slot_mapping=to_device(slot_mapping, torch.int64, device),
        max_query_len=int(q_lens.max()),
        max_seq_len=int(seq_lens.max()),
        query_start_loc_cpu=query_start_loc.tolist(),
        seq_lens_cpu=seq_lens.tolist(),
    )
    if shared_prefix:
        segments, distinct_start = plan_segments(chunks, meta.query_start_loc_cpu, block_size)
        if segments:
            meta.shared = build_shared_prefix_metadata(segments, distinct_start, device)
    input_ids = to_device(token_ids, torch.int64, device)
    if pending_at:
        if pending_tokens is None:
            raise RuntimeError("inputs wait for sampled tokens but no iteration is in flight (a bug: please report)")
        rows = to_device(pending_rows, torch.int64, device)
        input_ids[to_device(pending_at, torch.int64, device)] = pending_tokens[rows]
    return ModelInputs(
        input_ids=input_ids,
        positions=to_device(positions, torch.int64, device),
        meta=meta,
        logits_indices=to_device(logits_indices, torch.int64, device),
        sampled_chunks=[chunks[i] for i in sampled],
    )
