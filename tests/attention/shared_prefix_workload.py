"""Synthetic prefix-shared batches (paged KV + AttentionMetadata with `shared`) for tests and benchmarks.

A batch is a forest of shared prefix nodes (each a run of whole KV blocks, child nodes extend their
parent) plus sequences, each hanging below one node (or none) with its own distinct tokens. Physical
blocks are a random permutation (block 0 is never owned: it is the block-table padding). With
`poison`, every cache slot nobody owns, including the tail of a sequence's last block, is NaN, so an
out-of-bounds KV read shows up in the output.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from batchllm.attention.metadata import AttentionMetadata, Segment, build_shared_prefix_metadata


@dataclass
class PrefixNode:
    parent: int  # index of the parent node, -1 for a root
    num_tokens: int  # own KV tokens (a multiple of the block size)


@dataclass
class SeqSpec:
    node: int  # deepest shared node this sequence hangs below, -1 for none
    distinct_len: int  # KV tokens after the shared prefix, this iteration's queries included
    q_len: int  # query tokens this iteration (the last q_len of its context)


@dataclass
class SharedBatch:
    query: torch.Tensor
    k_cache: torch.Tensor
    v_cache: torch.Tensor
    meta: AttentionMetadata
    scale: float


def with_fp8_caches(b: SharedBatch, k_scale: torch.Tensor, v_scale: torch.Tensor) -> SharedBatch:
    """The same batch with its caches quantized to e4m3 with per-KV-head scales (NaN slots stay NaN)."""
    from batchllm.kv_cache.fp8 import attach_kv_scale, quantize_kv

    caches = []
    for cache, scale in ((b.k_cache, k_scale), (b.v_cache, v_scale)):
        scale = scale.to(cache.device)
        fp8 = quantize_kv(cache, scale)
        attach_kv_scale(fp8, scale)
        caches.append(fp8)
    return SharedBatch(b.query, caches[0], caches[1], b.meta, b.scale)


def _chain(nodes: list[PrefixNode], node: int) -> list[int]:
    out = []
    while node >= 0:
        out.append(node)
        node = nodes[node].parent
    return out[::-1]


def _runs(mem: list[int], seqs: list[SeqSpec]) -> list[list[int]]:
    """Split a node's members into runs contiguous in the flat query order (each run: one segment)."""
    runs = [[mem[0]]]
    for b in mem[1:]:
        if all(seqs[x].q_len == 0 for x in range(runs[-1][-1] + 1, b)):
            runs[-1].append(b)
        else:
            runs.append([b])
    return runs


def make_shared_batch(
    nodes: list[PrefixNode],
    seqs: list[SeqSpec],
    num_q_heads: int,
    num_kv_heads: int,
    head_dim: int,
    dtype: torch.dtype,
    device: torch.device | str = "cpu",
    block_size: int = 16,
    seed: int = 0,
    poison: bool = True,
    min_members: int = 1,
) -> SharedBatch:
    """Build the batch. Each run of a node's members that is contiguous in `seqs` becomes one segment
    when it has at least `min_members` members with queries (and its members' parent node is a
    segment for them); otherwise those tokens are attended as part of the sequences' distinct parts.
    """
    g = torch.Generator().manual_seed(seed)
    for n in nodes:
        assert n.num_tokens % block_size == 0 and n.num_tokens > 0 and n.parent < len(nodes)
    node_blocks = [n.num_tokens // block_size for n in nodes]
    seq_blocks = [math.ceil(s.distinct_len / block_size) for s in seqs]
    num_blocks = sum(node_blocks) + sum(seq_blocks) + 2
    perm = (torch.randperm(num_blocks - 1, generator=g) + 1).tolist()
    own_node = []
    for nb in node_blocks:
        own_node.append(perm[:nb])
        perm = perm[nb:]
    own_seq = []
    for nb in seq_blocks:
        own_seq.append(perm[:nb])
        perm = perm[nb:]

    # Full block list and KV range of every node (ancestors' blocks first).
    full_table: list[list[int]] = []
    kv_range: list[tuple[int, int]] = []
    for i, n in enumerate(nodes):
        assert n.parent < i, "parents must precede children"
        parent_table = full_table[n.parent] if n.parent >= 0 else []
        start = kv_range[n.parent][1] if n.parent >= 0 else 0
        full_table.append(parent_table + own_node[i])
        kv_range.append((start, start + n.num_tokens))

    qsl = [0]
    for s in seqs:
        assert 1 <= s.q_len <= s.distinct_len or s.q_len == 0
        qsl.append(qsl[-1] + s.q_len)
    members: dict[int, list[int]] = {}
    for b, s in enumerate(seqs):
        if s.q_len > 0:
            for node in _chain(nodes, s.node):
                members.setdefault(node, []).append(b)
    segments, shared_end = [], [0] * len(seqs)
    seg_nodes: list[set[int]] = [set() for _ in seqs]  # nodes each sequence reads through a segment
    for node in sorted(members):  # parents first: a run becomes a segment only below segments
        for run in _runs(members[node], seqs):
            parent = nodes[node].parent
            if len(run) < min_members or (parent >= 0 and any(parent not in seg_nodes[b] for b in run)):
                continue
            level = len(_chain(nodes, node)) - 1
            segments.append(Segment(qsl[run[0]], qsl[run[-1] + 1], *kv_range[node], level, full_table[node]))
            for b in run:
                seg_nodes[b].add(node)
                shared_end[b] = max(shared_end[b], kv_range[node][1])
    # Levels must be contiguous from 0: a node whose parent is no segment cannot be one either.
    levels = sorted({s.level for s in segments})
    assert levels == list(range(len(levels))), "segment levels must be 0..L-1"

    tables = [(full_table[s.node] if s.node >= 0 else []) + own_seq[b] for b, s in enumerate(seqs)]
    prefix_len = [kv_range[s.node][1] if s.node >= 0 else 0 for s in seqs]
    seq_lens = [p + s.distinct_len for p, s in zip(prefix_len, seqs)]
    max_blocks = max([len(t) for t in tables] + [1])
    block_tables = torch.zeros(len(seqs), max_blocks, dtype=torch.int32)
    for b, t in enumerate(tables):
        block_tables[b, : len(t)] = torch.tensor(t, dtype=torch.int32)

    shape = (num_blocks, block_size, num_kv_heads, head_dim)
    if poison:
        k_cache = torch.full(shape, float("nan"))
        v_cache = torch.full(shape, float("nan"))
        owned = [(full_table[i], kv_range[i][1]) for i in range(len(nodes))] + list(zip(tables, seq_lens))
        for table, length in owned:
            pos = torch.arange(length)
            slots = torch.tensor(table, dtype=torch.int64)[pos // block_size] * block_size + pos % block_size
            k_cache.view(-1, num_kv_heads, head_dim)[slots] = torch.randn(length, num_kv_heads, head_dim, generator=g)
            v_cache.view(-1, num_kv_heads, head_dim)[slots] = torch.randn(length, num_kv_heads, head_dim, generator=g)
    else:  # benchmark sizes: generate on the device, in the target dtype
        dg = torch.Generator(device=device).manual_seed(seed)
        k_cache = torch.randn(shape, generator=dg, device=device, dtype=dtype)
        v_cache = torch.randn(shape, generator=dg, device=device, dtype=dtype)

    slots = []
    for b, s in enumerate(seqs):
        for p in range(seq_lens[b] - s.q_len, seq_lens[b]):
            slots.append(tables[b][p // block_size] * block_size + p % block_size)
    query = 1.5 * torch.randn(qsl[-1], num_q_heads, head_dim, generator=g)  # peakier softmax than randn
    q_lens = [s.q_len for s in seqs]
    meta = AttentionMetadata(
        query_start_loc=torch.tensor(qsl, dtype=torch.int32, device=device),
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=device),
        block_tables=block_tables.to(device),
        slot_mapping=torch.tensor(slots, dtype=torch.int64, device=device),
        max_query_len=max(q_lens + [0]),
        max_seq_len=max(seq_lens + [0]),
        query_start_loc_cpu=qsl,
        seq_lens_cpu=seq_lens,
        shared=build_shared_prefix_metadata(segments, shared_end, device),
    )
    to = dict(device=device, dtype=dtype)
    return SharedBatch(query.to(**to), k_cache.to(**to), v_cache.to(**to), meta, head_dim**-0.5)


def uniform_groups(
    num_groups: int, degree: int, prefix_len: int, distinct_len: int, q_len: int = 1
) -> tuple[list[PrefixNode], list[SeqSpec]]:
    """num_groups one-level groups of `degree` members each (the benchmark's workload)."""
    nodes = [PrefixNode(-1, prefix_len) for _ in range(num_groups)]
    seqs = [SeqSpec(gi, distinct_len, q_len) for gi in range(num_groups) for _ in range(degree)]
    return nodes, seqs
