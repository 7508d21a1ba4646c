"""Flat inputs of one iteration, including tokens still in flight from the previous one."""

from __future__ import annotations

import pytest
import torch

from batchllm.core.plan import ScheduledChunk
from batchllm.core.request import PENDING_TOKEN
from batchllm.runner.input_batch import prepare_inputs
from tests.scheduler.fake_model import make_request


def _running(index: int, tokens: list[int], computed: int, blocks: list[int]):
    request = make_request(index, tokens, max_tokens=8)
    request.num_computed_tokens = computed
    request.block_ids = blocks
    return request


def test_pending_tokens_come_from_the_in_flight_iteration():
    decoding = _running(0, [5, 6, 7], computed=2, blocks=[3])
    decoding.token_ids[-1] = PENDING_TOKEN  # sampled into row 1 of the iteration in flight
    decoding.pending_token_row = 1
    prefilling = _running(1, [10, 11, 12, 13, 14, 15], computed=0, blocks=[0, 1])
    readmitted = _running(2, [20, 21, 22], computed=0, blocks=[2])  # recomputes its prompt and its pending token
    readmitted.token_ids[-1] = PENDING_TOKEN
    readmitted.pending_token_row = 0
    chunks = [ScheduledChunk(decoding, 1), ScheduledChunk(prefilling, 4), ScheduledChunk(readmitted, 3)]
    inputs = prepare_inputs(chunks, block_size=4, device=torch.device("cpu"),
                            pending_tokens=torch.tensor([70, 60, 50]))
    assert inputs.input_ids.tolist() == [60, 10, 11, 12, 13, 20, 21, 70]
    assert inputs.positions.tolist() == [2, 0, 1, 2, 3, 0, 1, 2]
    assert inputs.meta.slot_mapping.tolist() == [14, 0, 1, 2, 3, 8, 9, 10]
    assert [c.request for c in inputs.sampled_chunks] == [decoding, readmitted]  # the prefill is not done


def test_pending_token_without_an_iteration_in_flight_is_a_bug():
    request = _running(0, [5, 6, 7], computed=2, blocks=[0])
    request.token_ids[-1] = PENDING_TOKEN
    with pytest.raises(RuntimeError, match="no iteration is in flight"):
        prepare_inputs([ScheduledChunk(request, 1)], block_size=4, device=torch.device("cpu"))
