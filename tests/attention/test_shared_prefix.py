"""Prefix-shared attention: cascade reference and fused Triton kernel vs plain paged attention.

CPU: Triton interpreter (conftest sets TRITON_INTERPRET=1), tiny shapes. GPU: also Llama-8B shapes.
Every cache slot nobody owns is NaN and outputs start as NaN, so stray reads or unwritten rows fail.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from batchllm.attention.backend import get_attention_backend  # noqa: E402
from batchllm.attention.reference import paged_attention_reference  # noqa: E402
from batchllm.attention.shared_prefix_reference import (  # noqa: E402
    attend_with_lse,
    merge_partials,
    shared_prefix_attention_reference,
)
from tests.attention.shared_prefix_workload import (  # noqa: E402
    PrefixNode,
    SeqSpec,
    SharedBatch,
    make_shared_batch,
    uniform_groups,
)
from batchllm.attention.triton.graph_plan import get_plan as _get_plan  # noqa: E402
from batchllm.attention.triton.shared_prefix import shared_prefix_attention_triton  # noqa: E402
from batchllm.attention.triton.shared_prefix_plan import (  # noqa: E402
    DECODE_TILES,
    DEFAULT_DECODE_TILES,
    _choose_shared_splits,
    is_prefill_heavy,
    set_decode_tiles,
    shared_prefix_config,
)
from batchllm.attention.triton.warmup import precompile_shared_prefix_kernels  # noqa: E402

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
ATOL = {torch.float32: 2e-5, torch.float16: 4e-3, torch.bfloat16: 2e-2}
RTOL = {torch.float32: 1e-4, torch.float16: 4e-3, torch.bfloat16: 2e-2}
DTYPES = [torch.float32, torch.bfloat16]


def batch(nodes, seqs, heads=(4, 2), head_dim=32, dtype=torch.float32, **kw) -> SharedBatch:
    return make_shared_batch(nodes, seqs, *heads, head_dim, dtype, device=DEVICE, **kw)


def reference(b: SharedBatch) -> torch.Tensor:
    return paged_attention_reference(b.query.float(), b.k_cache.float(), b.v_cache.float(), b.meta, b.scale)


def check(b: SharedBatch, **kwargs) -> torch.Tensor:
    """Kernel on a NaN-poisoned output vs the fp32 paged reference (which ignores meta.shared)."""
    out = torch.full_like(b.query, float("nan"))
    res = shared_prefix_attention_triton(b.query, b.k_cache, b.v_cache, b.meta, b.scale, out=out, **kwargs)
    assert res is out
    assert not torch.isnan(out).any(), "unwritten or NaN output elements"
    torch.testing.assert_close(out.float(), reference(b), atol=ATOL[b.query.dtype], rtol=RTOL[b.query.dtype])
    return out


# Workloads (nodes, seqs); members of a node are contiguous.
def one_level_decode():
    # Groups of 5, 2 and 1 members (a 1-member segment), plus two sequences with no segment.
    nodes = [PrefixNode(-1, 48), PrefixNode(-1, 16), PrefixNode(-1, 80)]
    seqs = [SeqSpec(0, d, 1) for d in (1, 7, 16, 33, 70)] + [SeqSpec(1, 3, 1), SeqSpec(1, 20, 1)]
    seqs += [SeqSpec(-1, 40, 1), SeqSpec(2, 9, 1), SeqSpec(-1, 1, 1)]
    return nodes, seqs


def suffix_prefill():
    # Members prefill their suffixes (several query tokens each, causal only within the suffix).
    nodes = [PrefixNode(-1, 32), PrefixNode(-1, 64)]
    seqs = [SeqSpec(0, 20, 20), SeqSpec(0, 5, 3), SeqSpec(0, 37, 37), SeqSpec(1, 9, 9), SeqSpec(1, 70, 41)]
    seqs += [SeqSpec(-1, 30, 30)]
    return nodes, seqs


def mixed():
    # Decodes first, then extends; node 0 has members in both parts (engine order); node 1 straddles.
    nodes = [PrefixNode(-1, 32), PrefixNode(-1, 48), PrefixNode(-1, 16)]
    seqs = [SeqSpec(-1, 12, 1), SeqSpec(0, 4, 1), SeqSpec(0, 30, 1), SeqSpec(1, 7, 1)]
    seqs += [SeqSpec(1, 25, 6), SeqSpec(1, 8, 8), SeqSpec(2, 50, 3), SeqSpec(-1, 33, 33), SeqSpec(0, 9, 2)]
    return nodes, seqs


def two_level():
    # Root 0 with children 1 (3 members) and 2 (2 members) plus one member only at level 0;
    # root 3 with a child 4 that has a single member; a lone sequence.
    nodes = [PrefixNode(-1, 32), PrefixNode(0, 16), PrefixNode(0, 48), PrefixNode(-1, 16), PrefixNode(3, 32)]
    seqs = [SeqSpec(1, 5, 1), SeqSpec(1, 18, 1), SeqSpec(1, 3, 2), SeqSpec(0, 6, 1), SeqSpec(2, 7, 7)]
    seqs += [SeqSpec(2, 40, 1), SeqSpec(4, 11, 1), SeqSpec(3, 2, 1), SeqSpec(-1, 21, 4)]
    return nodes, seqs


WORKLOADS = {"decode": one_level_decode, "prefill": suffix_prefill, "mixed": mixed, "two_level": two_level}


def random_workload(seed: int) -> tuple[list[PrefixNode], list[SeqSpec], int]:
    """Random forest of up to 3 levels, random members (decode / extend), random block size."""
    g = torch.Generator().manual_seed(seed)
    rint = lambda lo, hi: int(torch.randint(lo, hi + 1, (1,), generator=g))  # noqa: E731
    block = [8, 16, 32][rint(0, 2)]
    nodes: list[PrefixNode] = []
    seqs: list[SeqSpec] = []

    def grow(parent: int, depth: int) -> None:
        nodes.append(PrefixNode(parent, block * rint(1, 4)))
        me = len(nodes) - 1
        for _ in range(rint(0, 3)):
            if depth < 2 and rint(0, 2) == 0:
                grow(me, depth + 1)
            else:
                q = 1 if rint(0, 1) else rint(1, 12)
                seqs.append(SeqSpec(me, rint(q, q + 30), q))

    for _ in range(rint(1, 3)):
        grow(-1, 0)
        if rint(0, 1):
            q = rint(1, 5)
            seqs.append(SeqSpec(-1, rint(q, 40), q))
    if not seqs:
        seqs.append(SeqSpec(0, 3, 1))
    return nodes, seqs, block


# ------------------------------------------------------------------------------ reference


@pytest.mark.parametrize("name", sorted(WORKLOADS))
def test_reference_matches_paged(name):
    b = batch(*WORKLOADS[name](), heads=(8, 2))
    got = shared_prefix_attention_reference(b.query, b.k_cache, b.v_cache, b.meta, b.scale)
    torch.testing.assert_close(got, reference(b), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("seed", range(6))
def test_reference_random(seed):
    nodes, seqs, block = random_workload(seed)
    b = batch(nodes, seqs, heads=(6, 2), block_size=block, seed=seed)
    got = shared_prefix_attention_reference(b.query, b.k_cache, b.v_cache, b.meta, b.scale)
    torch.testing.assert_close(got, reference(b), atol=1e-5, rtol=1e-5)


def test_reference_merge_is_exact():
    g = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(3, 4, 8, generator=g), torch.randn(10, 2, 8, generator=g), torch.randn(10, 2, 8, generator=g)
    whole, whole_lse = attend_with_lse(q, k, v, 0.3)
    parts = [attend_with_lse(q, k[a:e], v[a:e], 0.3) for a, e in ((0, 4), (4, 9), (9, 10))]
    empty = attend_with_lse(q, k[:1], v[:1], 0.3, mask=torch.zeros(3, 1, dtype=torch.bool))
    assert torch.isinf(empty[1]).all() and (empty[0] == 0).all()
    outs = torch.stack([p[0] for p in parts] + [empty[0]])
    lses = torch.stack([p[1] for p in parts] + [empty[1]])
    torch.testing.assert_close(merge_partials(outs, lses), whole, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(torch.logsumexp(lses, 0), whole_lse, atol=1e-6, rtol=1e-6)


# ------------------------------------------------------------------------------ Triton kernel


@pytest.mark.parametrize("name", sorted(WORKLOADS))
@pytest.mark.parametrize("dtype", DTYPES)
def test_kernel_workloads(name, dtype):
    check(batch(*WORKLOADS[name](), heads=(8, 2), dtype=dtype, seed=1))


@pytest.mark.parametrize("heads", [(2, 2), (4, 2), (6, 2)])
def test_kernel_head_layouts(heads):
    # MHA, GQA 2, and G = 3 (not a power of two: padded rows in every tile).
    check(batch(*two_level(), heads=heads, dtype=torch.bfloat16, seed=2))


@pytest.mark.parametrize("splits", [2, 3])
def test_kernel_shared_split_k(splits):
    # Splits of a short segment can be empty (LSE = -inf) and must merge exactly.
    nodes, seqs = two_level()
    check(batch(nodes, seqs, dtype=torch.float32, seed=3), shared_splits=splits)


@pytest.mark.parametrize("name", ["mixed", "two_level"])
def test_kernel_cascade_variant(name):
    check(batch(*WORKLOADS[name](), dtype=torch.bfloat16, seed=4), cascade=True)


def test_kernel_large_group_many_m_tiles():
    # 40 members x G 4 = 160 stacked rows: several M-tiles of one segment; head_dim 64, block 32.
    nodes, seqs = uniform_groups(2, 40, 64, 5)
    seqs[3] = SeqSpec(0, 17, 1)
    check(batch(nodes, seqs, heads=(8, 2), head_dim=64, dtype=torch.bfloat16, block_size=32, seed=5))


@pytest.mark.parametrize("seed", range(4))
def test_kernel_random(seed):
    nodes, seqs, block = random_workload(100 + seed)
    g = torch.Generator().manual_seed(seed)
    dtype = [torch.float32, torch.bfloat16, torch.float16][int(torch.randint(3, (1,), generator=g))]
    heads = [(2, 2), (4, 2), (8, 2)][int(torch.randint(3, (1,), generator=g))]
    splits = [None, 1, 2][int(torch.randint(3, (1,), generator=g))]
    check(batch(nodes, seqs, heads=heads, dtype=dtype, block_size=block, seed=seed), shared_splits=splits)


def test_kernel_uses_segment_blocks_not_sequence_blocks():
    """The prefix must be read through seg_block_tables (once per group): point the sequences' own
    block tables for the prefix at a NaN block and the paged reference breaks, the kernel must not."""
    b = batch(*one_level_decode(), dtype=torch.float32, seed=6)
    shared = b.meta.shared
    nan_block = 0  # the block-table padding block: nobody owns it, all NaN
    assert torch.isnan(b.k_cache[nan_block]).all()
    for s in range(shared.num_segments):
        first, last = shared.seg_q_start_cpu[s], shared.seg_q_end_cpu[s]
        members = [i for i in range(b.meta.num_seqs) if first <= b.meta.query_start_loc_cpu[i] < last]
        for i in members:
            b.meta.block_tables[i, : shared.seg_kv_end_cpu[s] // 16] = nan_block
    want = shared_prefix_attention_reference(b.query, b.k_cache, b.v_cache, b.meta, b.scale)
    assert not torch.isnan(want).any()
    assert torch.isnan(reference(b)).any()
    got = shared_prefix_attention_triton(b.query, b.k_cache, b.v_cache, b.meta, b.scale)
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)


def test_no_segments_and_errors():
    b = batch([PrefixNode(-1, 16)], [SeqSpec(0, 5, 1), SeqSpec(-1, 9, 3)], min_members=2)
    assert b.meta.shared.num_segments == 0
    check(b)  # only distinct tiles: the whole context is "distinct"
    plain = batch([], [SeqSpec(-1, 5, 1)])
    plain.meta.shared = None
    with pytest.raises(ValueError):
        shared_prefix_attention_triton(plain.query, plain.k_cache, plain.v_cache, plain.meta, plain.scale)


def test_plan_is_cached_and_split_heuristic():
    b = batch(*one_level_decode())
    cfg = shared_prefix_config(4, 2, 32, torch.float32)
    p1 = _get_plan(b.meta, cfg, 2, 2, b.query.device, None)
    assert _get_plan(b.meta, cfg, 2, 2, b.query.device, None) is p1
    assert p1.num_decodes == b.meta.num_seqs and p1.n_extend_tiles == 0
    assert p1.s_block_m == 16  # largest segment: 5 members x G 2 rows
    # One long segment next to little other work: split; big batches: no split.
    import numpy as np

    assert _choose_shared_splits(np.array([1]), np.array([32]), 64, 8, 132) > 1
    assert _choose_shared_splits(np.array([2] * 16), np.array([32] * 16), 8192 * 4, 8, 132) == 1


# ------------------------------------------------------------------------------ start-up compile


def _variant(plan) -> tuple[int, bool, bool]:
    """What selects a compiled variant of the fused launch (the split count is a runtime value)."""
    return plan.s_block_m, plan.num_decodes > 0, plan.n_extend_tiles > 0


@pytest.mark.parametrize("dtype, launches", [(torch.float32, 6), (torch.bfloat16, 10)])
def test_precompile_covers_every_variant_a_batch_can_select(monkeypatch, dtype, launches):
    """Every (tile config, variant) a batch can select is compiled at start; in 16-bit, prefill-heavy
    launches select their own tiles, so those variants are precompiled too."""
    import batchllm.attention.triton.shared_prefix as tsp

    seen = set()
    real = tsp.get_plan

    def spy(meta, cfg, *args):
        plan = real(meta, cfg, *args)
        seen.add((cfg, _variant(plan)))
        return plan

    monkeypatch.setattr(tsp, "get_plan", spy)
    heads, head_dim = (8, 2), 32
    assert precompile_shared_prefix_kernels(*heads, head_dim, dtype, DEVICE, 16) == launches
    precompiled = set(seen)
    # Batches an engine produces: groups of many sizes, decodes, suffix prefills, both, two levels, and
    # prefill-heavy ones; each with the tile config the kernel's entry picks for it.
    workloads = [uniform_groups(3, d, 32, 20, q) for d in (2, 3, 16) for q in (1, 7)]
    workloads += [uniform_groups(2, d, 32, 140, q) for d in (2, 8) for q in (1, 70, 130)] + [mixed(), two_level()]
    selected = set()
    for seed, (nodes, seqs) in enumerate(workloads):
        b = batch(nodes, seqs, heads=heads, head_dim=head_dim, dtype=dtype, seed=seed, min_members=2)
        heavy = is_prefill_heavy(b.query.shape[0], b.meta.num_seqs)
        cfg = shared_prefix_config(*heads, head_dim, dtype, prefill_heavy=heavy)
        selected.add((cfg, _variant(real(b.meta, cfg, heads[0] // heads[1], heads[1], DEVICE, None))))
    assert len(precompiled) == launches and selected <= precompiled, selected - precompiled
    prefill_cfg = shared_prefix_config(*heads, head_dim, dtype, prefill_heavy=True)
    if dtype != torch.float32:
        assert prefill_cfg != shared_prefix_config(*heads, head_dim, dtype)
        assert any(cfg == prefill_cfg for cfg, _ in selected), "no batch of the list was prefill-heavy"


def test_prefill_tiles_match_reference():
    """The prefill-heavy tile config (taller shared and extend tiles) computes the same attention."""
    cfg = shared_prefix_config(4, 2, 32, torch.bfloat16, prefill_heavy=True)
    assert cfg.shared_block_m == cfg.extend_block_m == 128
    nodes, seqs = uniform_groups(2, 3, 32, 40, 40)
    check(batch(nodes + [PrefixNode(-1, 16)], seqs + [SeqSpec(2, 9, 1), SeqSpec(-1, 70, 70)], seed=5), config=cfg)
    check(batch(*mixed(), seed=6), config=cfg)
    check(batch(*two_level(), seed=7), config=cfg)
    assert is_prefill_heavy(600, 80) and not is_prefill_heavy(600, 100)


@pytest.mark.parametrize("tiles", sorted(DECODE_TILES))
def test_every_decode_tile_set_matches_reference(tiles):
    """Each named decode tile set is what 16-bit decode launches use once picked, and computes the same
    attention (decode groups, two levels, a mixed batch)."""
    set_decode_tiles(tiles)
    try:
        assert shared_prefix_config(4, 2, 32, torch.bfloat16) == DECODE_TILES[tiles]
        check(batch(*uniform_groups(3, 5, 32, 40), dtype=torch.bfloat16, seed=8))
        check(batch(*two_level(), dtype=torch.bfloat16, seed=9))
        check(batch(*mixed(), dtype=torch.bfloat16, seed=10))
    finally:
        set_decode_tiles(DEFAULT_DECODE_TILES)
    with pytest.raises(ValueError, match="decode tiles must be one of"):
        set_decode_tiles("wide")


# ------------------------------------------------------------------------------ backend


@pytest.mark.parametrize("name", ["triton", "triton-unfused"])
def test_backend_writes_kv_then_attends(name):
    b = batch(*mixed(), dtype=torch.bfloat16, seed=7)
    want = reference(b)
    flat_k = b.k_cache.view(-1, *b.k_cache.shape[2:])
    flat_v = b.v_cache.view(-1, *b.v_cache.shape[2:])
    slots = b.meta.slot_mapping
    key, value = flat_k[slots].clone(), flat_v[slots].clone()
    flat_k[slots] = float("nan")  # the backend must store this iteration's KV before attending
    flat_v[slots] = float("nan")
    backend = get_attention_backend(name)
    assert backend.name == name and backend.supports_shared_prefix == (name == "triton")
    out = backend.forward(b.query, key, value, b.k_cache, b.v_cache, b.meta, b.scale)
    torch.testing.assert_close(out.float(), want, atol=ATOL[torch.bfloat16], rtol=RTOL[torch.bfloat16])


# ------------------------------------------------------------------------------ GPU: realistic shapes
gpu = pytest.mark.skipif(not CUDA, reason="needs CUDA")


@gpu
@pytest.mark.parametrize("degree", [1, 4, 16, 64])
def test_gpu_llama8b_decode(degree):
    nodes, seqs = uniform_groups(max(1, 64 // degree), degree, 2000 // 16 * 16, 200)
    check(batch(nodes, seqs, heads=(32, 8), head_dim=128, dtype=torch.bfloat16, seed=degree, poison=False))


@gpu
def test_gpu_llama8b_mixed_two_level_and_cascade():
    nodes = [PrefixNode(-1, 1024), PrefixNode(0, 976), PrefixNode(0, 480), PrefixNode(-1, 2000 // 16 * 16)]
    seqs = [SeqSpec(1, 200, 1)] * 12 + [SeqSpec(2, 150, 1)] * 5 + [SeqSpec(0, 210, 1)] + [SeqSpec(3, 190, 1)] * 7
    seqs += [SeqSpec(1, 300, 129), SeqSpec(3, 600, 512), SeqSpec(-1, 900, 900)]
    b = batch(nodes, seqs, heads=(32, 8), head_dim=128, dtype=torch.bfloat16, seed=30)
    check(b)
    check(b, cascade=True)
    check(b, shared_splits=4)
    check(batch(nodes, seqs, heads=(32, 8), head_dim=128, dtype=torch.float32, seed=31))


@gpu
def test_gpu_llama8b_prefill_heavy_uses_prefill_tiles():
    """A micro-benchmark prefill iteration (16 members' 200 own tokens over a 2000-token prefix, twice,
    after 64 decodes) launches the prefill tiles and matches the reference."""
    nodes, seqs = uniform_groups(2, 16, 2000 // 16 * 16, 200, 200)
    dec_nodes, dec_seqs = uniform_groups(4, 16, 2000 // 16 * 16, 230)
    dec_seqs = [SeqSpec(s.node + 2, s.distinct_len, 1) for s in dec_seqs]
    b = batch(nodes + dec_nodes, dec_seqs + seqs, heads=(32, 8), head_dim=128, dtype=torch.bfloat16, seed=33,
              poison=False)  # fmt: skip
    assert is_prefill_heavy(b.query.shape[0], b.meta.num_seqs)
    check(b)
    cfg = shared_prefix_config(32, 8, 128, torch.bfloat16, prefill_heavy=True)
    assert _get_plan(b.meta, cfg, 4, 8, b.query.device, None).s_block_m == 128


@gpu
def test_gpu_small_batch_uses_split_k():
    nodes, seqs = uniform_groups(1, 8, 2000 // 16 * 16, 200)
    b = batch(nodes, seqs, heads=(32, 8), head_dim=128, dtype=torch.bfloat16, seed=32, poison=False)
    cfg = shared_prefix_config(32, 8, 128, torch.bfloat16)
    assert _get_plan(b.meta, cfg, 4, 8, b.query.device, None).splits > 1
    check(b)
