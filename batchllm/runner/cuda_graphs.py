"""CUDA graphs for pure-decode iterations: one captured forward per bucketed batch size and launch shape.

A decode iteration of a big model launches hundreds of small kernels; replaying a graph removes the
per-launch CPU cost. Batches are padded to the next bucket with dummy sequences that read and write
only a reserved padding block, so the captured shapes stay fixed.

Batches whose prefix groups share KV (meta.shared) are graphed too: the fused kernel's grid is sized
for the most shared tiles a batch of that bucket can have (tiles past the real ones exit at once), its
tile height and split count are fixed per bucket, and the segment tables live in static buffers
refilled before each replay. So one graph per (bucket, levels) serves every grouping: one-level graphs
are captured up front with the plain ones (when the backend shares prefixes), two-level ones up front
when multi-level grouping is on, and any other when a batch first needs it.
"""

from __future__ import annotations

import bisect
from typing import Optional

import torch

from batchllm.attention.backend import AttentionBackend, GraphShape
from batchllm.attention.metadata import AttentionMetadata, SharedPrefixMetadata, max_decode_segments
from batchllm.model.decoder import DecoderForCausalLM
from batchllm.runner.input_batch import ModelInputs

# Powers of two up to 256 rows, where a decode step is bound by weight bytes and padding rows are nearly
# free; past the ridge (about 260 rows on an H100) the GEMMs are compute-bound and every padding row
# costs, so the steps there are 32, then 64 rows (at most about 12 % padding).
DEFAULT_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256) + tuple(range(288, 513, 32)) + tuple(range(576, 1025, 64))
MAX_SHARED_LEVELS = 2  # deeper chains run eagerly

GraphKey = tuple[int, Optional[GraphShape]]


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
        # The attention's query dtype (the activations'): not the cache's, which may be FP8.
        self.dtype = model.embed_tokens.weight.dtype
        self.device = device
        self.heads = (model.cfg.num_heads, model.cfg.num_kv_heads, model.cfg.head_dim)
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
        # Every graph copies its logits here, so graphs do not each keep a [bucket, vocab] output alive.
        self.logits = torch.empty(size, model.cfg.vocab_size, dtype=torch.float32, device=device)
        # Segment tables of shared batches (allocated with the first shared graph); what the backend's
        # kernels replay besides them (their launch plan) is the planner's.
        max_segments = max_decode_segments(size, MAX_SHARED_LEVELS)
        self.graph_planner = backend.init_capture_graph(
            size, MAX_SHARED_LEVELS, *self.heads, self.dtype, device, kv_dtype=kv_caches[0][0].dtype
        )  # fmt: skip
        self._seg_cols: Optional[torch.Tensor] = None  # [5, max_segments]: q_start, q_end, kv_start, kv_end, level
        self._seg_block_tables: Optional[torch.Tensor] = None  # [max_segments, max_blocks_per_seq]
        self._distinct_kv_start: Optional[torch.Tensor] = None  # [size]
        self._max_segments = max_segments
        self.graphs: dict[GraphKey, torch.cuda.CUDAGraph] = {}
        self._pool = None
        for bucket in reversed(self.buckets):  # largest first: smaller graphs reuse its memory pool
            self._capture((bucket, None))
        self.capture_shared_graphs()

    def capture_shared_graphs(self, num_levels: int = 1) -> None:
        """Capture the shared-segment graphs of every bucket for 1..num_levels levels (capped at
        MAX_SHARED_LEVELS), if the backend shares prefixes, so a timed run captures none."""
        if self.backend.supports_shared_prefix:
            for levels in range(1, min(num_levels, MAX_SHARED_LEVELS) + 1):
                for bucket in reversed(self.buckets[1:]):  # a segment needs two rows
                    key = self._shared_key(bucket, levels)
                    if key not in self.graphs:
                        self._capture(key)

    def _shared_key(self, bucket: int, num_levels: int) -> GraphKey:
        return bucket, self.graph_planner.graph_shape(bucket, num_levels)

    @property
    def max_batch(self) -> int:
        return self.buckets[-1]

    @property
    def num_shared_graphs(self) -> int:
        return sum(1 for _, shape in self.graphs if shape is not None)

    def _shared_meta(self, bucket: int, shape: GraphShape) -> SharedPrefixMetadata:
        if self._seg_cols is None:
            device = self.device
            self._seg_cols = torch.zeros(5, self._max_segments, dtype=torch.int32, device=device)
            self._seg_block_tables = torch.full_like(self.block_tables[: self._max_segments], self.pad_block)
            self._distinct_kv_start = torch.zeros(self.max_batch, dtype=torch.int32, device=device)
        num_segments = max_decode_segments(bucket, shape.num_levels)
        cols = self._seg_cols[:, :num_segments]
        host = [0] * num_segments  # only the lengths matter: the pinned plan replaces what the host copies feed
        return SharedPrefixMetadata(
            seg_q_start=cols[0], seg_q_end=cols[1], seg_kv_start=cols[2], seg_kv_end=cols[3], seg_level=cols[4],
            seg_block_tables=self._seg_block_tables[:num_segments],
            distinct_kv_start=self._distinct_kv_start[:bucket],
            num_levels=shape.num_levels,
            seg_q_start_cpu=host, seg_q_end_cpu=host, seg_kv_start_cpu=host, seg_kv_end_cpu=host, seg_level_cpu=host,
            distinct_kv_start_cpu=[0] * bucket,
        )  # fmt: skip

    def _meta(self, key: GraphKey) -> AttentionMetadata:
        bucket, shape = key
        meta = AttentionMetadata(
            query_start_loc=self.query_start_loc[: bucket + 1],
            seq_lens=self.seq_lens[:bucket],
            block_tables=self.block_tables[:bucket],
            slot_mapping=self.slot_mapping[:bucket],
            max_query_len=1,
            max_seq_len=self.max_model_len,  # fixes the split-K factor per bucket; real lengths come from seq_lens
            query_start_loc_cpu=list(range(bucket + 1)),
            seq_lens_cpu=[1] * bucket,
        )
        if shape is not None:
            meta.shared = self._shared_meta(bucket, shape)
        return meta

    def _forward(self, key: GraphKey, meta: AttentionMetadata) -> None:
        bucket = key[0]
        logits = self.model(
            self.input_ids[:bucket], self.positions[:bucket], self.kv_caches, meta, self.backend,
            self.logits_indices[:bucket],
        )  # fmt: skip
        self.logits[:bucket].copy_(logits)

    @torch.inference_mode()
    def _capture(self, key: GraphKey) -> None:
        meta = self._meta(key)
        self._reset_padding(0, key[0])
        if key[1] is not None:
            # The backend pins the graph's launch plan; no shared tiles run while capturing (rows read
            # only the padding block).
            self.graph_planner.prepare_for_capture(meta, key[1])
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):  # compile Triton kernels and settle allocations outside the capture
                self._forward(key, meta)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            self._forward(key, meta)
        self._pool = graph.pool()
        self.graphs[key] = graph

    def _reset_padding(self, start: int, end: int) -> None:
        """Rows [start, end) become padding: one token in the padding block, no shared KV."""
        if end <= start:
            return
        self.input_ids[start:end].zero_()
        self.positions[start:end].zero_()
        self.slot_mapping[start:end].fill_(self.pad_block * self.block_size)
        self.seq_lens[start:end].fill_(1)
        self.block_tables[start:end, 0].fill_(self.pad_block)
        if self._distinct_kv_start is not None:
            self._distinct_kv_start[start:end].zero_()

    def _key(self, inputs: ModelInputs) -> Optional[GraphKey]:
        """The graph that can run this batch (None: run it eagerly)."""
        meta = inputs.meta
        if not (
            meta.max_query_len == 1
            and meta.num_seqs <= self.max_batch
            and len(inputs.sampled_chunks) == meta.num_seqs  # a 1-token prefill chunk that samples nothing: eager
            and meta.block_tables.shape[1] <= self.block_tables.shape[1]
        ):
            return None
        bucket = self.buckets[bisect.bisect_left(self.buckets, meta.num_seqs)]
        if meta.shared is None:
            return bucket, None
        if meta.shared.num_levels > MAX_SHARED_LEVELS:
            return None
        return self._shared_key(bucket, meta.shared.num_levels)

    @torch.inference_mode()
    def run(self, inputs: ModelInputs) -> Optional[torch.Tensor]:
        """Logits of a pure-decode batch by graph replay (every sequence samples), capturing its shape first
        if no batch needed it before; None when no graph fits the batch (run it eagerly)."""
        key = self._key(inputs)
        if key is None:
            return None
        if key not in self.graphs:
            self._capture(key)
        meta = inputs.meta
        n = meta.num_seqs
        bucket = key[0]
        blocks = meta.block_tables.shape[1]
        self.input_ids[:n].copy_(inputs.input_ids, non_blocking=True)
        self.positions[:n].copy_(inputs.positions, non_blocking=True)
        self.slot_mapping[:n].copy_(meta.slot_mapping, non_blocking=True)
        self.seq_lens[:n].copy_(meta.seq_lens, non_blocking=True)
        self.block_tables[:n, :blocks].copy_(meta.block_tables, non_blocking=True)
        self._reset_padding(n, bucket)
        if key[1] is not None:
            self._load_segments(meta.shared, key, n)
        self.graphs[key].replay()
        return self.logits[:n]

    def _load_segments(self, shared: SharedPrefixMetadata, key: GraphKey, num_seqs: int) -> None:
        bucket, shape = key
        self.graph_planner.prepare_for_replay(shared, shape, max_decode_segments(bucket, shape.num_levels))
        num = shared.num_segments
        cols = self._seg_cols
        for row, tensor in enumerate(
            (shared.seg_q_start, shared.seg_q_end, shared.seg_kv_start, shared.seg_kv_end, shared.seg_level)
        ):
            cols[row, :num].copy_(tensor, non_blocking=True)
        width = shared.seg_block_tables.shape[1]
        self._seg_block_tables[:num, :width].copy_(shared.seg_block_tables, non_blocking=True)
        self._distinct_kv_start[:num_seqs].copy_(shared.distinct_kv_start, non_blocking=True)
