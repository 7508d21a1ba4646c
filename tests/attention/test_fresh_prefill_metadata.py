"""The metadata of whole-sequence prefills outside the scheduler (peak profiling, teacher-forced scoring)."""

from __future__ import annotations

import torch

from batchllm.attention.metadata import fresh_prefill_metadata


def test_each_sequence_gets_its_own_contiguous_blocks_from_position_zero():
    meta, positions, blocks = fresh_prefill_metadata([5, 3], block_size=4, device=torch.device("cpu"))
    assert blocks == 4 and meta.block_tables.tolist() == [[0, 1], [2, 3]]
    assert positions.tolist() == [0, 1, 2, 3, 4, 0, 1, 2]
    assert meta.slot_mapping.tolist() == [0, 1, 2, 3, 4, 8, 9, 10]
    assert meta.query_start_loc_cpu == [0, 5, 8] and meta.seq_lens_cpu == [5, 3]
    assert meta.query_start_loc.tolist() == [0, 5, 8] and meta.max_query_len == meta.max_seq_len == 5
