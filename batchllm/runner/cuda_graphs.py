"""CUDA graphs for pure-decode iterations: one captured forward per bucketed batch size.

A decode iteration of a big model launches hundreds of small kernels; replaying a graph removes the
per-launch CPU cost. Batches are padded to the next bucket with dummy sequences that read and write
only a reserved padding block, so the captured shapes stay fixed. Batches with shared-prefix segments
run eagerly (their kernel grid depends on the groups present).
"""

from __future__ import annotations

import bisect
from typing import Optional

import torch

from batchllm.attention.backend import AttentionBackend
from batchllm.attention.metadata import AttentionMetadata
from batchllm.model.decoder import DecoderForCausalLM
from batchllm.runner.input_batch import ModelInputs

DEFAULT_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 768, 1024)


class DecodeGraphs:
    def __init__(
        self,
        model: DecoderForCausalLM,
        kv_caches: list[tuple[torch.Tensor, torch.Tensor]],
        backend: AttentionBackend,
        block_size: int,
        max_blocks_per_seq: int,
        pad_block: int,
        max_model_len: int,
        max_batch: int,
        device: torch.device,
    ) -> None:
        self.model, self.kv_caches, self.backend = model, kv_caches, backend
        self.buckets = [b for b in DEFAULT_BUCKETS if b <= max_batch] or [1]
        size = self.buckets[-1]
        self.pad_block, self.block_size, self.max_model_len = pad_block, block_size, max_model_len
        self.input_ids = torch.zeros(size, dtype=torch.long, device=device)
        self.positions = torch.zeros(size, dtype=torch.long, device=device)
        self.slot_mapping = torch.full((size,), pad_block * block_size, dtype=torch.long, device=device)
        self.seq_lens = torch.ones(size, dtype=torch.int32, device=device)
        self.block_tables = torch.full((size, max_blocks_per_seq), pad_block, dtype=torch.int32, device=device)
        self.query_start_loc = torch.arange(size + 1, dtype=torch.int32, device=device)
        self.logits_indices = torch.arange(size, dtype=torch.long, device=device)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[int, torch.Tensor] = {}
        self._pool = None
        for bucket in reversed(self.buckets):  # largest first: smaller graphs reuse its memory pool
            self._capture(bucket)

    @property
    def max_batch(self) -> int:
        return self.buckets[-1]

    def _meta(self, bucket: int) -> AttentionMetadata:
        return AttentionMetadata(
            query_start_loc=self.query_start_loc[: bucket + 1],
            seq_lens=self.seq_lens[:bucket],
            block_tables=self.block_tables[:bucket],
            slot_mapping=self.slot_mapping[:bucket],
            max_query_len=1,
            max_seq_len=self.max_model_len,  # fixes the split-K factor per bucket; real lengths come from seq_lens
            query_start_loc_cpu=list(range(bucket + 1)),
            seq_lens_cpu=[1] * bucket,
        )

    def _forward(self, bucket: int) -> torch.Tensor:
        return self.model(
            self.input_ids[:bucket], self.positions[:bucket], self.kv_caches, self._meta(bucket), self.backend,
            self.logits_indices[:bucket],
        )

    @torch.inference_mode()
    def _capture(self, bucket: int) -> None:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):  # compile Triton kernels and settle allocations outside the capture
                self._forward(bucket)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            self.outputs[bucket] = self._forward(bucket)
        self._pool = graph.pool()
        self.graphs[bucket] = graph

    def can_run(self, inputs: ModelInputs) -> bool:
        meta = inputs.meta
        return (
            meta.max_query_len == 1
            and meta.shared is None
            and meta.num_seqs <= self.max_batch
            and len(inputs.sampled_chunks) == meta.num_seqs  # a 1-token prefill chunk that samples nothing: eager
            and meta.block_tables.shape[1] <= self.block_tables.shape[1]
        )

    @torch.inference_mode()
    def run(self, inputs: ModelInputs) -> Optional[torch.Tensor]:
        """Logits of a pure-decode batch by graph replay (every sequence samples)."""
        n = inputs.meta.num_seqs
        bucket = self.buckets[bisect.bisect_left(self.buckets, n)]
        blocks = inputs.meta.block_tables.shape[1]
        self.input_ids[:n].copy_(inputs.input_ids, non_blocking=True)
        self.positions[:n].copy_(inputs.positions, non_blocking=True)
        self.slot_mapping[:n].copy_(inputs.meta.slot_mapping, non_blocking=True)
        self.seq_lens[:n].copy_(inputs.meta.seq_lens, non_blocking=True)
        self.block_tables[:n, :blocks].copy_(inputs.meta.block_tables, non_blocking=True)
        if bucket > n:  # padding rows: their one token lives in the padding block
            self.input_ids[n:bucket].zero_()
            self.positions[n:bucket].zero_()
            self.slot_mapping[n:bucket].fill_(self.pad_block * self.block_size)
            self.seq_lens[n:bucket].fill_(1)
            self.block_tables[n:bucket, 0].fill_(self.pad_block)
        self.graphs[bucket].replay()
        return self.outputs[bucket][:n]
