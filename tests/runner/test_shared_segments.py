"""Shared segments found in a batch: the shared-prefix reference over them equals plain paged attention."""

from __future__ import annotations

import torch

from batchllm.attention.kv_store import write_kv_cache
from batchllm.attention.reference import paged_attention_reference
from batchllm.attention.shared_prefix_reference import shared_prefix_attention_reference
from batchllm.config import SchedulerConfig
from batchllm.kv_cache.block_pool import BlockPool
from batchllm.runner.input_batch import prepare_inputs
from batchllm.runner.shared_segments import order_for_sharing
from batchllm.scheduler.scheduler import BatchScheduler
from tests.scheduler.fake_model import make_request, run_step


def test_segments_cover_group_members_and_attention_matches():
    block_size = 4
    system = list(range(1, 13))  # 3 blocks shared by everyone
    doc_a, doc_b = list(range(20, 28)), list(range(40, 48))  # 2 more blocks shared by half
    prompts = [system + doc_a + [100 + i, 101 + i] for i in range(3)] + [system + doc_b + [200 + i] for i in range(3)]
    prompts.append([300, 301, 302])
    requests = [make_request(i, p, max_tokens=3) for i, p in enumerate(prompts)]
    pool = BlockPool(64)
    config = SchedulerConfig.preset("batchllm", multi_level=True, min_shared_len=4, max_num_batched_tokens=512)
    scheduler = BatchScheduler(config, pool, block_size)
    scheduler.add_requests(requests)
    for _ in range(6):  # prefixes first, then members join with their suffix
        out = scheduler.schedule()
        members = [c for c in out.chunks if not c.request.is_prefix and c.request.num_shared_blocks]
        if len(members) >= 4:
            break
        run_step(scheduler, out, [])
    chunks = order_for_sharing(out.chunks)
    inputs = prepare_inputs(chunks, block_size, torch.device("cpu"), shared_prefix=True)
    shared = inputs.meta.shared
    assert shared is not None and shared.num_levels == 2
    assert sorted(zip(shared.seg_level_cpu, shared.seg_kv_start_cpu, shared.seg_kv_end_cpu)) == [
        (0, 0, 12), (1, 12, 20), (1, 12, 20)]

    g = torch.Generator().manual_seed(0)
    heads, kv_heads, dim = 4, 2, 8
    k_cache = torch.randn(64, block_size, kv_heads, dim, generator=g)
    v_cache = torch.randn(64, block_size, kv_heads, dim, generator=g)
    num_tokens = inputs.input_ids.shape[0]
    query = torch.randn(num_tokens, heads, dim, generator=g)
    write_kv_cache(torch.randn(num_tokens, kv_heads, dim, generator=g), torch.randn(num_tokens, kv_heads, dim, generator=g),
                   k_cache, v_cache, inputs.meta.slot_mapping)
    expected = paged_attention_reference(query, k_cache, v_cache, inputs.meta, 0.3)
    got = shared_prefix_attention_reference(query, k_cache, v_cache, inputs.meta, 0.3)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
