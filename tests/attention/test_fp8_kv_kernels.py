"""FP8 (e4m3) KV cache: every Triton kernel that reads the cache vs the PyTorch reference on the same FP8 cache.

CPU: Triton interpreter (conftest sets TRITON_INTERPRET=1), tiny shapes. The caches are the NaN-poisoned
random batches of the other kernel tests, quantized with per-head scales that differ between K and V and
between heads, so a scale applied to the wrong head or tensor shows. Two comparisons each:

* kernel vs `paged_attention_reference` given the *same* FP8 cache (which it dequantizes, then attends in
  fp32): the query dtype's usual tolerance, as for 16/32-bit caches;
* FP8 cache vs the unquantized fp32 cache (reference on both): max abs error <= 0.25, mean <= 0.025.
  The stored K/V are within half an e4m3 ulp (<= 2^-4 relative) of the originals, so V's rounding alone
  can move an output by 2^-4 x max|v| (about 0.25 for these randn values, with a one-token context);
  measured here: max 0.15, mean 0.014 (unit-variance K/V, 1.5 x randn queries, head_dim 32).
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from batchllm.attention.backend import get_attention_backend  # noqa: E402
from batchllm.attention.reference import paged_attention_reference  # noqa: E402
from batchllm.attention.shared_prefix_reference import shared_prefix_attention_reference  # noqa: E402
from batchllm.attention.triton.paged import paged_attention_triton  # noqa: E402
from batchllm.attention.triton.shared_prefix import shared_prefix_attention_triton  # noqa: E402
from batchllm.attention.triton.utils import (  # noqa: E402
    FP8_DOT_MODES,
    KV_NATIVE,
    KV_WIDEN,
    kv_fp8_mode,
    set_fp8_kv_compute,
)
from batchllm.kv_cache.fp8 import FP8_KV_DTYPE, quantize_kv  # noqa: E402
from tests.attention.shared_prefix_workload import SeqSpec, SharedBatch, make_shared_batch, with_fp8_caches  # noqa: E402
from tests.attention.test_shared_prefix import mixed, two_level  # noqa: E402

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
ATOL = {torch.float32: 2e-5, torch.bfloat16: 2e-2}
RTOL = {torch.float32: 1e-4, torch.bfloat16: 2e-2}
FP8_VS_FP32_MAX, FP8_VS_FP32_MEAN = 0.25, 0.025
HEADS = (4, 2)  # GQA 2
K_SCALE = torch.tensor([0.5, 1.25])  # per KV head; V's differ from K's
V_SCALE = torch.tensor([2.0, 0.75])


def to_fp8(b: SharedBatch) -> SharedBatch:
    """The same batch with its caches quantized to e4m3 (poisoned NaN slots stay NaN)."""
    return with_fp8_caches(b, K_SCALE, V_SCALE)


def fp32_reference(b: SharedBatch) -> torch.Tensor:
    return paged_attention_reference(b.query.float(), b.k_cache.float(), b.v_cache.float(), b.meta, b.scale)


def check_fp8(b: SharedBatch, run) -> None:
    """`run(query, k_cache, v_cache, meta, scale, out)` on the FP8 batch vs the reference on the same FP8 cache,
    and the FP8 result vs the fp32-cache one."""
    q8 = to_fp8(b)
    assert q8.k_cache.dtype == FP8_KV_DTYPE
    out = torch.full_like(b.query, float("nan"))
    assert run(q8.query, q8.k_cache, q8.v_cache, q8.meta, q8.scale, out) is out
    assert not torch.isnan(out).any(), "unwritten or NaN output elements"
    ref = paged_attention_reference(q8.query.float(), q8.k_cache, q8.v_cache, q8.meta, q8.scale)
    dtype = b.query.dtype
    torch.testing.assert_close(out.float(), ref, atol=ATOL[dtype], rtol=RTOL[dtype])
    err = (ref - fp32_reference(b)).abs()
    assert err.max().item() <= FP8_VS_FP32_MAX and err.mean().item() <= FP8_VS_FP32_MEAN


def plain_batch(specs: list[tuple[int, int]], dtype: torch.dtype, seed: int) -> SharedBatch:
    """(q_len, seq_len) per sequence, no shared segments."""
    seqs = [SeqSpec(-1, seq_len, q_len) for q_len, seq_len in specs]
    b = make_shared_batch([], seqs, *HEADS, 32, dtype, DEVICE, seed=seed)
    b.meta.shared = None
    return b


def paged(**kwargs):
    return lambda q, k, v, meta, scale, out: paged_attention_triton(q, k, v, meta, scale, out=out, **kwargs)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_paged_decode(dtype):
    check_fp8(plain_batch([(1, 1), (1, 17), (1, 40), (1, 64)], dtype, seed=1), paged())


def test_paged_decode_split_k():
    check_fp8(plain_batch([(1, 70), (1, 33)], torch.bfloat16, seed=2), paged(num_splits=3))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_paged_prefill_and_mixed(dtype):
    """Prefill / extend tiles (decodes first, then longer chunks), the path a prompt's prefill takes."""
    check_fp8(plain_batch([(1, 9), (1, 30), (20, 20), (7, 45)], dtype, seed=3), paged())


@pytest.mark.parametrize("cascade", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_shared_prefix_fused_and_cascade(dtype, cascade):
    nodes, seqs = mixed()
    b = make_shared_batch(nodes, seqs, *HEADS, 32, dtype, DEVICE, seed=4)

    def run(q, k, v, meta, scale, out):
        return shared_prefix_attention_triton(q, k, v, meta, scale, out=out, cascade=cascade)

    check_fp8(b, run)


def test_shared_prefix_two_levels_split_k():
    nodes, seqs = two_level()
    b = make_shared_batch(nodes, seqs, *HEADS, 32, torch.bfloat16, DEVICE, seed=5)

    def run(q, k, v, meta, scale, out):
        return shared_prefix_attention_triton(q, k, v, meta, scale, out=out, shared_splits=2)

    check_fp8(b, run)


def test_cascade_reference_reads_fp8_like_the_paged_one():
    """The prefix-shared oracle dequantizes the same way (its result equals the paged reference's)."""
    nodes, seqs = two_level()
    q8 = to_fp8(make_shared_batch(nodes, seqs, *HEADS, 32, torch.float32, DEVICE, seed=6))
    got = shared_prefix_attention_reference(q8.query, q8.k_cache, q8.v_cache, q8.meta, q8.scale)
    want = paged_attention_reference(q8.query, q8.k_cache, q8.v_cache, q8.meta, q8.scale)
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("name", ["triton", "reference"])
def test_backend_quantizes_the_new_kv_then_attends(name):
    """The backend writes this iteration's K/V into the FP8 cache (divided by the scale, clamped, cast),
    then attends; equal to the reference over a cache holding the same quantized values."""
    nodes, seqs = mixed()
    b = to_fp8(make_shared_batch(nodes, seqs, *HEADS, 32, torch.bfloat16, DEVICE, seed=7, poison=False))
    key = torch.randn(b.meta.slot_mapping.shape[0], HEADS[1], 32, device=DEVICE) * 3
    value = torch.randn_like(key) * 3
    key[0, 0, 0] = 1e4  # beyond e4m3's range with any scale here: clamped to 448 * scale
    backend = get_attention_backend(name)
    assert backend.supports_fp8_kv
    out = backend.forward(b.query, key.to(b.query.dtype), value.to(b.query.dtype), b.k_cache, b.v_cache, b.meta, b.scale)
    slots = b.meta.slot_mapping
    stored_k = b.k_cache.view(-1, HEADS[1], 32)[slots].float() * K_SCALE.to(DEVICE)[:, None]
    want_k = quantize_kv(key.to(b.query.dtype), K_SCALE.to(DEVICE)).float() * K_SCALE.to(DEVICE)[:, None]
    torch.testing.assert_close(stored_k, want_k, atol=0, rtol=0)
    assert stored_k[0, 0, 0].item() == 448 * K_SCALE[0].item()
    ref = paged_attention_reference(b.query.float(), b.k_cache, b.v_cache, b.meta, b.scale)
    torch.testing.assert_close(out.float(), ref, atol=ATOL[torch.bfloat16], rtol=RTOL[torch.bfloat16])


# FP8 dots (set_fp8_kv_compute("fp8")): q and the softmax weights are rounded to e4m3 inside the kernel,
# so the kernel is compared with the reference on the same FP8 cache by an error bound, not the bf16
# tolerance. Each rounding is <= 2^-4 relative; measured under the interpreter on these batches
# (bf16 queries, head_dim 32, outputs of order 1): max abs error 0.084, mean 0.0089 against the
# same-cache reference, where the widened path gives 0.013 and 0.0011. The same bound holds for
# set_fp8_kv_compute("fp8-qk"), which rounds q only.
DOTS_MAX, DOTS_MEAN = 0.15, 0.015


@pytest.fixture(params=sorted(FP8_DOT_MODES))
def fp8_dots(request):
    set_fp8_kv_compute(request.param)
    yield FP8_DOT_MODES[request.param]
    set_fp8_kv_compute("fp16")


def check_fp8_dots(b: SharedBatch, run, mode: int) -> None:
    q8 = to_fp8(b)
    assert kv_fp8_mode(q8.query.dtype, q8.k_cache.dtype) == mode
    out = torch.full_like(b.query, float("nan"))
    run(q8.query, q8.k_cache, q8.v_cache, q8.meta, q8.scale, out)
    assert not torch.isnan(out).any(), "unwritten or NaN output elements"
    ref = paged_attention_reference(q8.query.float(), q8.k_cache, q8.v_cache, q8.meta, q8.scale)
    err = (out.float() - ref).abs()
    assert err.max().item() <= DOTS_MAX and err.mean().item() <= DOTS_MEAN, (err.max().item(), err.mean().item())


def test_fp8_dots_paged_decode_prefill_and_split_k(fp8_dots):
    check_fp8_dots(plain_batch([(1, 1), (1, 17), (1, 40), (1, 64)], torch.bfloat16, seed=1), paged(), fp8_dots)
    check_fp8_dots(plain_batch([(1, 9), (1, 30), (20, 20), (7, 45)], torch.bfloat16, seed=3), paged(), fp8_dots)
    check_fp8_dots(plain_batch([(1, 70), (1, 33)], torch.bfloat16, seed=2), paged(num_splits=3), fp8_dots)


@pytest.mark.parametrize("cascade", [False, True])
def test_fp8_dots_shared_prefix(fp8_dots, cascade):
    for nodes_seqs, seed, splits in ((mixed(), 4, None), (two_level(), 5, 2)):
        b = make_shared_batch(*nodes_seqs, *HEADS, 32, torch.bfloat16, DEVICE, seed=seed)

        def run(q, k, v, meta, scale, out):
            return shared_prefix_attention_triton(q, k, v, meta, scale, out=out, cascade=cascade, shared_splits=splits)

        check_fp8_dots(b, run, fp8_dots)


def test_fp8_dots_leave_fp32_queries_exact_and_reject_unknown_modes(fp8_dots):
    assert kv_fp8_mode(torch.float32, FP8_KV_DTYPE) == KV_WIDEN
    assert kv_fp8_mode(torch.bfloat16, torch.bfloat16) == KV_NATIVE
    with pytest.raises(ValueError, match="fp8 KV compute"):
        set_fp8_kv_compute("int8")
