"""FP8 (e4m3) KV cache: the quantize / dequantize rule, scales, checkpoint scale names, pool sizing, config."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from batchllm.attention.backend import ReferenceBackend, check_kv_cache_support
from batchllm.config import CacheConfig, EngineConfig, check_kv_cache_dtype
from batchllm.kv_cache.cache_tensors import (
    allocate_host_kv_cache,
    allocate_kv_cache,
    kv_bytes_per_block,
    num_blocks_for_budget,
)
from batchllm.kv_cache.fp8 import (
    FP8_KV_DTYPE,
    CheckpointKVScales,
    attach_kv_scale,
    dequantize_kv,
    fp8_round_trip_bound,
    kv_scale,
    quantize_kv,
    storage_view,
)

ARCH = SimpleNamespace(num_layers=3, num_kv_heads=2, head_dim=8)


def test_round_trip_within_half_an_e4m3_ulp():
    """|dequantize(quantize(x)) - x| <= max(2^-4 |x|, 2^-10 scale) for |x| / scale <= 448 (per head)."""
    scale = torch.tensor([0.25, 3.0])
    g = torch.Generator().manual_seed(0)
    # Magnitudes from deep subnormal to the top of the range, both signs, per head.
    x = torch.randn(4096, 2, 8, generator=g) * torch.logspace(-4, 2.3, 4096)[:, None, None]
    x = x.clamp(-440 * scale[:, None], 440 * scale[:, None])
    q = quantize_kv(x, scale)
    assert q.dtype == FP8_KV_DTYPE
    back = dequantize_kv(q, scale)
    for h in range(2):
        err = (back[:, h] - x[:, h]).abs()
        assert (err <= fp8_round_trip_bound(x[:, h], scale[h].item())).all()
    # The bound is tight: normal values do use most of it.
    assert ((back - x).abs() / x.abs().clamp_min(1.0)).max() > 2.0**-5


def test_out_of_range_values_clamp_to_448_times_the_scale():
    scale = torch.tensor([2.0])
    x = torch.tensor([[[1e6, -1e6, 900.0, float("inf")]]])
    back = dequantize_kv(quantize_kv(x, scale), scale)
    assert back.tolist() == [[[896.0, -896.0, 896.0, 896.0]]]


def test_scales_attach_per_head_and_are_validated():
    cache = torch.zeros(4, 16, 2, 8, dtype=FP8_KV_DTYPE)
    assert kv_scale(cache).tolist() == [1.0, 1.0]  # uncalibrated default, as vLLM
    attach_kv_scale(cache, torch.tensor(0.5))
    assert kv_scale(cache).tolist() == [0.5, 0.5]
    attach_kv_scale(cache, torch.tensor([0.5, 2.0]))
    assert kv_scale(cache).dtype == torch.float32 and kv_scale(cache).tolist() == [0.5, 2.0]
    with pytest.raises(ValueError, match="num_kv_heads=2"):
        attach_kv_scale(cache, torch.ones(3))
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="positive and finite"):
            attach_kv_scale(cache, bad)


def test_checkpoint_scale_names():
    scales = CheckpointKVScales()
    names = {
        "model.layers.0.self_attn.k_scale": 0.5,
        "model.layers.0.self_attn.v_scale": 0.25,
        "layers.1.self_attn.kv_scale": 2.0,  # older single scale for both
        "model.layers.2.self_attn.attn.k_scale": 3.0,
        "model.layers.2.self_attn.v_proj.output_scale": 4.0,
    }
    for name, value in names.items():
        assert scales.offer(name, torch.tensor(value, dtype=torch.bfloat16))
    for name in ("model.layers.0.self_attn.k_proj.weight", "model.layers.0.self_attn.k_proj.weight_scale",
                 "model.layers.0.mlp.k_scale", "model.norm.weight"):  # fmt: skip
        assert not scales.offer(name, torch.tensor(1.0))
    got = [tuple(None if s is None else s.item() for s in scales.for_layer(i)) for i in range(4)]
    assert got == [(0.5, 0.25), (2.0, 2.0), (3.0, 4.0), (None, None)]

    caches = allocate_kv_cache(ARCH, 2, 16, FP8_KV_DTYPE, torch.device("cpu"), scales)
    assert [(kv_scale(k).tolist(), kv_scale(v).tolist()) for k, v in caches] == [
        ([0.5, 0.5], [0.25, 0.25]), ([2.0, 2.0], [2.0, 2.0]), ([3.0, 3.0], [4.0, 4.0])
    ]


def test_fp8_pool_holds_twice_the_blocks_of_bf16():
    bf16 = kv_bytes_per_block(ARCH, 16, torch.bfloat16)
    assert bf16 == 2 * kv_bytes_per_block(ARCH, 16, FP8_KV_DTYPE) == 2 * 2 * 3 * 2 * 8 * 2 * 16 // 2
    cache = CacheConfig(block_size=16)
    budget = 1000 * bf16 + 7
    assert num_blocks_for_budget(budget, ARCH, cache, FP8_KV_DTYPE) == 2 * num_blocks_for_budget(
        budget, ARCH, cache, torch.bfloat16
    )
    caches = allocate_kv_cache(ARCH, 5, 16, FP8_KV_DTYPE, torch.device("cpu"))
    assert len(caches) == 3 and all(t.dtype == FP8_KV_DTYPE and t.shape == (5, 16, 2, 8) for kv in caches for t in kv)
    assert sum(t.numel() * t.element_size() for kv in caches for t in kv) == 5 * kv_bytes_per_block(ARCH, 16, FP8_KV_DTYPE)
    host = allocate_host_kv_cache(ARCH, 4, 16, FP8_KV_DTYPE, torch.device("cpu"))
    assert host[0][0].dtype == FP8_KV_DTYPE


def test_block_copies_through_the_byte_view_are_exact():
    """What swap-out / swap-in do with an FP8 cache: index copies on raw bytes keep every bit."""
    device = torch.device("cpu")
    (k, _), = allocate_kv_cache(SimpleNamespace(num_layers=1, num_kv_heads=2, head_dim=8), 6, 4, FP8_KV_DTYPE, device)
    k.copy_(quantize_kv(torch.randn(6, 4, 2, 8) * 10, torch.ones(2)))
    (host, _), = allocate_host_kv_cache(SimpleNamespace(num_layers=1, num_kv_heads=2, head_dim=8), 3, 4,
                                        FP8_KV_DTYPE, device)  # fmt: skip
    storage_view(host)[torch.tensor([2, 0])] = storage_view(k)[torch.tensor([1, 4])]
    assert torch.equal(host[2].float(), k[1].float()) and torch.equal(host[0].float(), k[4].float())


def test_kv_cache_dtype_is_validated():
    with pytest.raises(ValueError, match=r"kv_cache_dtype='int8' is not supported; use one of \['auto', 'fp8', 'fp8_e4m3'\]"):
        CacheConfig(kv_cache_dtype="int8")
    with pytest.raises(ValueError, match="kv_cache_dtype"):
        CacheConfig(kv_cache_dtype=torch.float8_e4m3fn)
    for name in ("fp8", "fp8_e4m3"):
        config = EngineConfig("m", torch.bfloat16, torch.device("cpu"), 64, cache=CacheConfig(kv_cache_dtype=name))
        assert config.kv_dtype == FP8_KV_DTYPE
    assert EngineConfig("m", torch.bfloat16, torch.device("cpu"), 64).kv_dtype == torch.bfloat16


def test_fp8_needs_compute_capability_8_9_on_a_gpu(monkeypatch):
    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA A100")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    with pytest.raises(ValueError, match=r"kv_cache_dtype='fp8' needs .* 8.9 .* A100 is 8.0; use kv_cache_dtype='auto'"):
        check_kv_cache_dtype("fp8", cuda)
    check_kv_cache_dtype("auto", cuda)  # no FP8, no requirement
    for capability in ((8, 9), (9, 0), (10, 0)):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None, c=capability: c)
        check_kv_cache_dtype("fp8_e4m3", cuda)


def test_a_backend_without_the_ability_is_refused():
    class Plain:
        name = "plain"

    with pytest.raises(ValueError, match=r"'plain' cannot read an FP8 KV cache \(kv_cache_dtype='fp8'\); use kv_cache_dtype='auto'"):
        check_kv_cache_support(Plain(), FP8_KV_DTYPE, "fp8")
    check_kv_cache_support(Plain(), torch.bfloat16, "auto")
    check_kv_cache_support(ReferenceBackend(), FP8_KV_DTYPE, "fp8")
