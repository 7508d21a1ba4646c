"""Fused Triton layer kernels vs the PyTorch layers they replace on the GPU (CPU: Triton interpreter).

Outputs start as NaN where a kernel writes into a fresh tensor, so unwritten elements fail."""

from __future__ import annotations

import os

import pytest
import torch

pytest.importorskip("triton")

from batchllm.model.layers import RMSNorm, RotaryEmbedding, _rotate_half  # noqa: E402
from batchllm.model.triton_ops import rms_norm, rotary_embedding_, silu_and_mul  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# One rounding step of the dtype (the kernels round where PyTorch rounds, but fp32 math inside an op
# may order additions differently).
# The interpreter casts fp32 to bf16 by truncation, not round-to-nearest: allow a second bf16 step there.
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
TOL = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.float16: dict(atol=2e-3, rtol=1e-3),
       torch.bfloat16: dict(atol=4e-2, rtol=2e-2) if INTERPRET else dict(atol=1e-2, rtol=8e-3)}  # fmt: skip
# A single add: exact where the cast rounds to nearest as PyTorch's does; one bf16 step in the interpreter.
EXACT = {dtype: dict(atol=0, rtol=0) for dtype in DTYPES} | ({torch.bfloat16: dict(atol=0, rtol=8e-3)} if INTERPRET else {})


def _rand(*shape, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    return (2 * torch.randn(*shape, generator=g)).to(dtype).to(DEVICE)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hidden", [64, 96])
def test_rms_norm_matches_module(dtype, hidden):
    norm = RMSNorm(hidden, 1e-5).to(DEVICE)
    with torch.no_grad():
        norm.weight.copy_(_rand(hidden, dtype=torch.float32, seed=1))
    norm = norm.to(dtype)
    x = _rand(7, hidden, dtype=dtype, seed=2)
    torch.testing.assert_close(rms_norm(x, norm.weight, norm.eps), norm(x), **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_rms_norm_adds_the_residual_in_place(dtype):
    norm = RMSNorm(64, 1e-6).to(DEVICE).to(dtype)
    x, residual = _rand(5, 64, dtype=dtype, seed=3), _rand(5, 64, dtype=dtype, seed=4)
    want_sum = x + residual
    want = norm(want_sum)
    got = rms_norm(x, norm.weight, norm.eps, residual=residual)
    torch.testing.assert_close(residual, want_sum, **EXACT[dtype])  # the same rounding as a PyTorch add
    torch.testing.assert_close(got, want, **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_silu_and_mul_matches_pytorch(dtype):
    gate_up = _rand(6, 2 * 80, dtype=dtype, seed=5)
    gate, up = gate_up.split(80, dim=-1)
    want = torch.nn.functional.silu(gate) * up
    torch.testing.assert_close(silu_and_mul(gate_up), want, **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_rotary_embedding_in_place_matches_module(dtype):
    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 64}  # fmt: skip
    rope = RotaryEmbedding(32, 300, 500000.0, scaling).to(DEVICE)
    qkv = _rand(9, (6 + 2 * 2) * 32, dtype=dtype, seed=6)
    q, k, _ = qkv.split([6 * 32, 2 * 32, 2 * 32], dim=-1)  # strided views, as the fused projection gives
    q, k = q.view(9, 6, 32), k.view(9, 2, 32)
    positions = torch.tensor([0, 1, 2, 17, 63, 64, 150, 299, 5], device=DEVICE)
    want_q, want_k = rope(positions, q.clone(), k.clone())
    untouched = qkv[:, 8 * 32 :].clone()
    rotary_embedding_(positions, q, k, rope.cos_cache, rope.sin_cache)
    torch.testing.assert_close(q, want_q, **TOL[dtype])
    torch.testing.assert_close(k, want_k, **TOL[dtype])
    torch.testing.assert_close(qkv[:, 8 * 32 :], untouched, atol=0, rtol=0)  # v is not touched


def test_rotate_half_reference_is_neox():
    x = torch.arange(4.0)
    assert _rotate_half(x).tolist() == [-2.0, -3.0, 0.0, 1.0]


@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_decoder_with_fused_kernels_matches_the_pytorch_path(tiny_models, monkeypatch, family):
    """The whole forward pass (residual stream carried between layers, in-place rope) with the fused
    kernels forced on gives the PyTorch path's logits (fp32, Triton interpreter on CPU)."""
    import batchllm.model.layers as layers
    from batchllm.attention.backend import get_attention_backend
    from batchllm.attention.metadata import AttentionMetadata
    from batchllm.kv_cache.cache_tensors import allocate_kv_cache
    from batchllm.model.arch_config import load_arch_config
    from batchllm.model.loader import load_model

    path = tiny_models[family]
    arch = load_arch_config(path)
    model = load_model(path, arch, 128, torch.float32, DEVICE)
    tokens = torch.tensor([5, 17, 300, 42, 7, 99, 1, 250, 64], device=DEVICE)
    n = len(tokens)
    meta = AttentionMetadata(
        query_start_loc=torch.tensor([0, n], dtype=torch.int32, device=DEVICE),
        seq_lens=torch.tensor([n], dtype=torch.int32, device=DEVICE),
        block_tables=torch.tensor([[0]], dtype=torch.int32, device=DEVICE),
        slot_mapping=torch.arange(n, device=DEVICE), max_query_len=n, max_seq_len=n,
        query_start_loc_cpu=[0, n], seq_lens_cpu=[n],
    )  # fmt: skip
    backend = get_attention_backend("reference")
    rows = torch.tensor([3, n - 1], device=DEVICE)

    def logits(fused: bool) -> torch.Tensor:
        monkeypatch.setattr(layers, "use_fused_kernels", lambda x: fused)
        caches = allocate_kv_cache(arch, 1, 16, torch.float32, DEVICE)
        with torch.no_grad():
            return model(tokens, torch.arange(n, device=DEVICE), caches, meta, backend, rows)

    torch.testing.assert_close(logits(True), logits(False), atol=1e-4, rtol=1e-4)
