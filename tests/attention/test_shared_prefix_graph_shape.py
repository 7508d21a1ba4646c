"""The fused prefix-shared kernel on a CUDA-graph decode launch: padded rows and segment slots, the grid
pinned to the worst case a bucket can have (CPU: Triton interpreter, with a 4-SM stand-in for the split rule)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from batchllm.attention.triton.graph_plan import (  # noqa: E402
    decode_graph_max_segments,
    decode_graph_shape,
    decode_graph_tile_starts,
    pin_decode_graph_plan,
)
from batchllm.attention.reference import paged_attention_reference  # noqa: E402
from batchllm.attention.triton.shared_prefix import shared_prefix_attention_triton  # noqa: E402
from batchllm.attention.triton.shared_prefix_plan import shared_prefix_config  # noqa: E402
from batchllm.kv_cache.fp8 import is_fp8  # noqa: E402
from tests.attention.shared_prefix_workload import PrefixNode, SeqSpec, SharedBatch, with_fp8_caches  # noqa: E402
from tests.attention.test_shared_prefix import ATOL, CUDA, DEVICE, RTOL, batch, reference  # noqa: E402


def _padded_graph_batch(b: SharedBatch, bucket: int, num_levels: int):
    """b's decode batch laid out as a CUDA graph sees it: `bucket` rows (padding rows read block 0),
    every segment slot of the bucket, the grid pinned to the most tiles such a batch can have."""
    from batchllm.attention.metadata import AttentionMetadata, SharedPrefixMetadata

    shared, n = b.meta.shared, b.meta.num_seqs
    heads = (b.query.shape[1], b.k_cache.shape[2], b.query.shape[2])
    kv_fp8 = is_fp8(b.k_cache.dtype)
    shape = decode_graph_shape(bucket, num_levels, *heads, b.query.dtype, DEVICE, kv_fp8)
    slots = decode_graph_max_segments(bucket, num_levels)
    starts = decode_graph_tile_starts(shared, shape, heads[0] // heads[1], slots, DEVICE)
    num = shared.num_segments
    cols = torch.zeros(5, slots, dtype=torch.int32, device=DEVICE)
    for row, t in enumerate((shared.seg_q_start, shared.seg_q_end, shared.seg_kv_start, shared.seg_kv_end,
                             shared.seg_level)):  # fmt: skip
        cols[row, :num] = t
    tables = torch.zeros(slots, shared.seg_block_tables.shape[1], dtype=torch.int32, device=DEVICE)
    tables[:num] = shared.seg_block_tables
    pad = bucket - n
    block_tables = torch.zeros(bucket, b.meta.block_tables.shape[1], dtype=torch.int32, device=DEVICE)
    block_tables[:n] = b.meta.block_tables
    host = [0] * slots
    meta = AttentionMetadata(
        query_start_loc=torch.arange(bucket + 1, dtype=torch.int32, device=DEVICE),
        seq_lens=torch.cat([b.meta.seq_lens, torch.ones(pad, dtype=torch.int32, device=DEVICE)]),
        block_tables=block_tables, slot_mapping=torch.zeros(bucket, dtype=torch.int64, device=DEVICE),
        max_query_len=1, max_seq_len=max(b.meta.seq_lens_cpu), query_start_loc_cpu=list(range(bucket + 1)),
        seq_lens_cpu=b.meta.seq_lens_cpu + [1] * pad,
        shared=SharedPrefixMetadata(
            *cols, tables, torch.cat([shared.distinct_kv_start, torch.zeros(pad, dtype=torch.int32, device=DEVICE)]),
            num_levels, host, host, host, host, host, [0] * bucket,
        ),
    )  # fmt: skip
    pin_decode_graph_plan(meta, shape, starts, *heads, b.query.dtype, kv_fp8)
    query = torch.cat([b.query, torch.randn(pad, *b.query.shape[1:], device=DEVICE).to(b.query.dtype)])
    return query, meta, shape


@pytest.mark.parametrize("degrees", [(2, 3, 5), (16, 2), (9,)])
def test_kernel_on_a_cuda_graph_launch_shape(degrees):
    """Padded rows and segment slots, a grid for the worst case: the real rows still get exact results."""
    nodes = [PrefixNode(-1, 48) for _ in degrees]
    seqs = [SeqSpec(g, 20 + 3 * i, 1) for g, d in enumerate(degrees) for i in range(d)]
    b = batch(nodes, seqs, heads=(8, 2), seed=len(degrees), min_members=2)
    b.k_cache[0], b.v_cache[0] = 0.5, 0.25  # the padding block holds finite KV, as the engine's does
    n = b.meta.num_seqs
    query, meta, shape = _padded_graph_batch(b, bucket=next_pow2_at_least(n + 3), num_levels=1)
    if not CUDA:  # the CPU stand-in has 4 SMs: the small buckets split (the rule is tested below)
        assert shape.splits == (1 if n > 16 else 2)
    out = torch.full_like(query, float("nan"))
    shared_prefix_attention_triton(query, b.k_cache, b.v_cache, meta, b.scale, out=out)
    assert not torch.isnan(out).any()
    torch.testing.assert_close(out[:n].float(), reference(b), atol=ATOL[b.query.dtype], rtol=RTOL[b.query.dtype])



def test_fp8_cache_graph_launch_replays_its_own_pinned_plan():
    """Over an FP8 cache the decode launch takes its own tiles; the graph pins the plan under that
    config, so the launch finds it (no second plan) and the real rows match the reference on that cache."""
    assert shared_prefix_config(32, 8, 128, torch.bfloat16, kv_fp8=True) != shared_prefix_config(32, 8, 128, torch.bfloat16)
    nodes = [PrefixNode(-1, 48), PrefixNode(-1, 32)]
    seqs = [SeqSpec(g, 20 + 3 * i, 1) for g, d in enumerate((5, 3)) for i in range(d)]
    b = batch(nodes, seqs, heads=(8, 2), dtype=torch.bfloat16, seed=7, min_members=2)
    b.k_cache[0], b.v_cache[0] = 0.5, 0.25
    b = with_fp8_caches(b, torch.tensor([0.5, 1.25]), torch.tensor([2.0, 0.75]))
    n = b.meta.num_seqs
    query, meta, _ = _padded_graph_batch(b, bucket=16, num_levels=1)
    out = torch.full_like(query, float("nan"))
    shared_prefix_attention_triton(query, b.k_cache, b.v_cache, meta, b.scale, out=out)
    assert len(meta.shared.launch_plans) == 1  # the pinned plan, not one made for the launch
    assert not torch.isnan(out).any()
    want = paged_attention_reference(b.query.float(), b.k_cache, b.v_cache, b.meta, b.scale)
    torch.testing.assert_close(out[:n].float(), want, atol=ATOL[torch.bfloat16], rtol=RTOL[torch.bfloat16])

def test_graph_shape_splits_only_small_buckets():
    shape = decode_graph_shape(1024, 2, 32, 8, 128, torch.bfloat16, DEVICE)
    assert (shape.num_levels, shape.s_block_m, shape.splits) == (2, 64, 1)
    # CPU stand-in: 4 SMs; 2 rows -> one tile per KV head (2 programs): split until 2 x programs > SMs
    assert decode_graph_shape(2, 1, 8, 2, 32, torch.float32, DEVICE).splits == (2 if not CUDA else 16)


def next_pow2_at_least(n: int) -> int:
    return 1 << (n - 1).bit_length()
