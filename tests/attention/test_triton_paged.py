"""Triton paged attention vs the PyTorch reference (CPU: Triton interpreter, tiny shapes; GPU: also real ones)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from batchllm.attention.reference import paged_attention_reference  # noqa: E402
from tests.attention.shared_prefix_workload import SeqSpec, SharedBatch, make_shared_batch  # noqa: E402
from batchllm.attention.triton.paged import (  # noqa: E402
    choose_num_splits,
    decode_config,
    paged_attention_triton,
)

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
ATOL = {torch.float32: 2e-5, torch.float16: 4e-3, torch.bfloat16: 2e-2}
RTOL = {torch.float32: 1e-4, torch.float16: 4e-3, torch.bfloat16: 2e-2}


def make_batch(
    specs: list[tuple[int, int]],
    num_q_heads: int,
    num_kv_heads: int,
    head_dim: int,
    dtype: torch.dtype,
    block_size: int = 16,
    seed: int = 0,
) -> SharedBatch:
    """specs: (q_len, seq_len) per sequence, no shared prefixes: random block permutation, every cache
    slot nobody owns NaN (see make_shared_batch), so any out-of-bounds KV read poisons the output."""
    seqs = [SeqSpec(-1, seq_len, q_len) for q_len, seq_len in specs]
    batch = make_shared_batch([], seqs, num_q_heads, num_kv_heads, head_dim, dtype, DEVICE, block_size, seed)
    batch.meta.shared = None  # plain paged attention
    return batch


def check(batch: SharedBatch, **kwargs) -> torch.Tensor:
    """Run the kernel on a NaN-poisoned output and compare with the fp32 reference on the same inputs."""
    out = torch.full_like(batch.query, float("nan"))
    res = paged_attention_triton(batch.query, batch.k_cache, batch.v_cache, batch.meta, batch.scale, out=out, **kwargs)
    assert res is out
    ref = paged_attention_reference(
        batch.query.float(), batch.k_cache.float(), batch.v_cache.float(), batch.meta, batch.scale
    )
    assert not torch.isnan(out).any(), "unwritten or NaN output elements"
    dtype = batch.query.dtype
    torch.testing.assert_close(out.float(), ref, atol=ATOL[dtype], rtol=RTOL[dtype])
    return out


def rand_specs(seed: int, n: int, kind: str, max_len: int = 100) -> list[tuple[int, int]]:
    g = torch.Generator().manual_seed(seed)
    specs = []
    for _ in range(n):
        seq_len = int(torch.randint(1, max_len + 1, (1,), generator=g))
        if kind == "decode":
            specs.append((1, seq_len))
        elif kind == "prefill":
            specs.append((seq_len, seq_len))
        else:
            specs.append((int(torch.randint(1, seq_len + 1, (1,), generator=g)), seq_len))
    return specs


HEADS = [(2, 2), (4, 2), (8, 2)]  # MHA, GQA 2, GQA 4
DTYPES = [torch.float32, torch.bfloat16]


@pytest.mark.parametrize("heads", HEADS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("head_dim", [32, 64])
def test_decode(heads, dtype, head_dim):
    specs = rand_specs(1, 5, "decode") + [(1, 1), (1, 16), (1, 17), (1, 64)]
    check(make_batch(specs, *heads, head_dim, dtype, seed=2))


@pytest.mark.parametrize("num_splits", [1, 2, 3, 8])
@pytest.mark.parametrize("dtype", DTYPES)
def test_decode_split_k(num_splits, dtype):
    # Short sequences leave some splits empty (LSE = -inf) and must still merge exactly.
    specs = [(1, 100), (1, 3), (1, 1), (1, 65), (1, 128)]
    check(make_batch(specs, 8, 2, 32, dtype, seed=3), num_splits=num_splits)


@pytest.mark.parametrize("heads", HEADS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_prefill(heads, dtype):
    # q_len == seq_len; 150 tokens spans several query tiles (BLOCK_Q = BLOCK_M // G).
    specs = rand_specs(4, 3, "prefill") + [(1, 1), (150, 150), (33, 33)]
    check(make_batch(specs, *heads, 32, dtype, seed=5))


@pytest.mark.parametrize("heads", HEADS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_mixed_decodes_first(heads, dtype):
    # Engine order: decodes, then extends (chunked prefill over a cached prefix) and prefills.
    specs = rand_specs(6, 4, "decode") + rand_specs(7, 4, "extend") + [(40, 40), (70, 130)]
    check(make_batch(specs, *heads, 64, dtype, seed=8))


@pytest.mark.parametrize("dtype", DTYPES)
def test_mixed_interleaved_and_empty(dtype):
    # Decodes after extends go through the prefill kernel; q_len 0 sequences (padding) are skipped.
    specs = [(5, 50), (1, 20), (0, 0), (1, 99), (17, 17), (0, 33), (1, 1), (60, 61)]
    check(make_batch(specs, 4, 2, 32, dtype, seed=9))


@pytest.mark.parametrize("block_size", [8, 32])
def test_other_block_sizes(block_size):
    specs = [(1, 70), (1, 5), (23, 90), (45, 45)]
    check(make_batch(specs, 4, 2, 32, torch.bfloat16, block_size=block_size, seed=10))
    check(make_batch(specs[:2], 4, 2, 32, torch.float32, block_size=block_size, seed=11), num_splits=4)


def test_fp16_and_odd_shapes():
    # G = 3 (not a power of two) and head_dim 48 (padded to 64 inside the kernel).
    specs = [(1, 40), (1, 77), (9, 50), (30, 30)]
    check(make_batch(specs, 6, 2, 48, torch.float16, seed=12))
    check(make_batch(specs[:2], 6, 2, 48, torch.float16, seed=13), num_splits=2)
    check(make_batch(specs, 2, 2, 64, torch.float16, seed=14))


@pytest.mark.parametrize("dtype", DTYPES)
def test_head_dim_128(dtype):
    specs = [(1, 90), (1, 17), (20, 60), (48, 48)]
    check(make_batch(specs, 8, 2, 128, dtype, seed=15))


@pytest.mark.parametrize("seed", range(4))
def test_random_batches(seed):
    """Random order of decodes / extends / prefills, random head layout, dtype and block size."""
    g = torch.Generator().manual_seed(100 + seed)
    pick = lambda xs: xs[int(torch.randint(len(xs), (1,), generator=g))]  # noqa: E731
    kinds = [pick(["decode", "decode", "extend", "prefill"]) for _ in range(int(torch.randint(1, 9, (1,), generator=g)))]
    specs = [rand_specs(seed * 10 + i, 1, kind, max_len=120)[0] for i, kind in enumerate(kinds)]
    heads, head_dim = pick(HEADS + [(6, 2)]), pick([16, 32, 64])
    dtype, block_size = pick(DTYPES + [torch.float16]), pick([16, 16, 8, 32])
    splits = pick([None, 1, 2, 5])
    check(make_batch(specs, *heads, head_dim, dtype, block_size=block_size, seed=seed), num_splits=splits)


def test_empty_batch():
    batch = make_batch([], 4, 2, 32, torch.float32)
    out = paged_attention_triton(batch.query, batch.k_cache, batch.v_cache, batch.meta, batch.scale)
    assert out.shape == (0, 4, 32)


def test_choose_num_splits():
    cfg = decode_config(32, 8, 128, torch.bfloat16)
    dev = torch.device("cpu")  # stands in for 4 SMs
    assert choose_num_splits(256, 8, 2200, cfg.block_n, dev) == 1
    assert choose_num_splits(1, 1, 2200, cfg.block_n, dev) == 8  # 16 wanted, capped at 35 tiles // 4
    assert choose_num_splits(1, 1, 64, cfg.block_n, dev) == 1  # too short to split
    if CUDA:
        assert choose_num_splits(1024, 8, 2200, cfg.block_n, DEVICE) == 1
        assert choose_num_splits(4, 8, 2200, cfg.block_n, DEVICE) > 1


def test_rejects_bad_inputs():
    batch = make_batch([(1, 5)], 4, 2, 32, torch.float32)
    with pytest.raises(ValueError):
        paged_attention_triton(batch.query.to(torch.float16), batch.k_cache, batch.v_cache, batch.meta, batch.scale)
    with pytest.raises(ValueError):
        paged_attention_triton(batch.query[:, :3], batch.k_cache, batch.v_cache, batch.meta, batch.scale)


# ---------------------------------------------------------------- GPU only: realistic shapes
gpu = pytest.mark.skipif(not CUDA, reason="needs CUDA")


@gpu
@pytest.mark.parametrize("batch_size", [4, 64])
def test_gpu_llama8b_decode(batch_size):
    g = torch.Generator().manual_seed(batch_size)
    specs = [(1, int(torch.randint(1800, 2201, (1,), generator=g))) for _ in range(batch_size)]
    check(make_batch(specs, 32, 8, 128, torch.bfloat16, seed=20))


@gpu
def test_gpu_llama8b_mixed():
    specs = [(1, 2200)] * 6 + [(1, 913), (512, 2200), (1000, 1000), (37, 1500)]
    check(make_batch(specs, 32, 8, 128, torch.bfloat16, seed=21))
    check(make_batch(specs[5:], 32, 8, 128, torch.float16, seed=22))


@gpu
def test_gpu_fp32_and_head_dim_64():
    specs = [(1, 700), (1, 2200), (300, 800), (257, 257)]
    check(make_batch(specs, 32, 8, 128, torch.float32, seed=23))
    check(make_batch(specs, 16, 4, 64, torch.bfloat16, seed=24))
    check(make_batch(specs[:2], 32, 8, 128, torch.bfloat16, seed=25), num_splits=8)
