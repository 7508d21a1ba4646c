"""Per-token FP8 quantization fused into the kernels that produce the activations (model/fp8_triton.py):
RMSNorm -> FP8 and SiLU-mul -> FP8 give the bytes and scales of the plain kernel followed by the quantizer,
and an FP8 decoder with them gives the logits of the unfused FP8 decoder (CPU: Triton interpreter)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from batchllm.model.fp8 import MIN_AMAX, Fp8Activations, quantize_per_token  # noqa: E402
from batchllm.model.fp8_triton import per_token_quant_fp8, rms_norm_fp8, silu_and_mul_fp8  # noqa: E402
from batchllm.model.triton_ops import rms_norm, silu_and_mul  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _rows(rows: int, cols: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    """Rows at magnitudes from 1e-2 to 1e2, one of them zero (the all-zero padding rows of CUDA graphs)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, cols, generator=g) * 10.0 ** (torch.rand(rows, 1, generator=g) * 4 - 2)
    x[1] = 0.0
    return x.to(dtype).to(DEVICE)


def _assert_same_fp8(got: tuple, want: tuple) -> None:
    (q, scale), (q_want, scale_want) = got, want
    assert q.dtype == torch.float8_e4m3fn and scale.shape == (q.shape[0], 1)
    assert torch.equal(scale, scale_want)
    # As floats: under the interpreter a tiny negative that rounds to zero can come out +0 in one of them.
    assert torch.equal(q.float(), q_want.float())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("hidden", [64, 96])  # 96: a row narrower than its power-of-two block
@pytest.mark.parametrize("with_residual", [False, True])
def test_rms_norm_fp8_is_the_norm_then_the_quantizer(dtype, hidden, with_residual):
    x = _rows(7, hidden, dtype, seed=hidden)
    weight = (1 + 0.3 * torch.randn(hidden, generator=torch.Generator().manual_seed(1))).to(dtype).to(DEVICE)
    residual = _rows(7, hidden, dtype, seed=hidden + 1) if with_residual else None
    residual_copy = residual.clone() if with_residual else None
    got = rms_norm_fp8(x, weight, 1e-5, MIN_AMAX, residual)
    want = per_token_quant_fp8(rms_norm(x, weight, 1e-5, residual_copy), MIN_AMAX)
    _assert_same_fp8(got, want)
    if with_residual:
        assert torch.equal(residual, residual_copy)  # x + residual written back, as the plain kernel does
        assert not torch.equal(residual, _rows(7, hidden, dtype, seed=hidden + 1))
    assert got[1][1] == MIN_AMAX / 448 and torch.equal(got[0][1].float(), torch.zeros(hidden, device=DEVICE))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("n", [80, 2500])  # 2500: two 2048-wide passes, the second partial
def test_silu_and_mul_fp8_is_the_activation_then_the_quantizer(dtype, n):
    gate_up = _rows(5, 2 * n, dtype, seed=n)
    _assert_same_fp8(silu_and_mul_fp8(gate_up, MIN_AMAX), per_token_quant_fp8(silu_and_mul(gate_up), MIN_AMAX))


def test_empty_batches_and_wrong_inputs():
    q, scale = rms_norm_fp8(torch.zeros(0, 64, device=DEVICE), torch.ones(64, device=DEVICE), 1e-5, MIN_AMAX)
    assert q.shape == (0, 64) and scale.shape == (0, 1)
    q, scale = silu_and_mul_fp8(torch.zeros(0, 160, device=DEVICE), MIN_AMAX)
    assert q.shape == (0, 80) and scale.shape == (0, 1)
    with pytest.raises(ValueError, match="weight in x's dtype"):
        rms_norm_fp8(torch.zeros(2, 64, device=DEVICE), torch.ones(64, dtype=torch.bfloat16, device=DEVICE), 1e-5,
                     MIN_AMAX)


def test_fp8_linear_takes_quantized_activations_as_its_own():
    from batchllm.model.fp8 import Fp8Linear

    linear = torch.nn.Linear(64, 48, bias=True)
    fp8 = Fp8Linear.like(linear)
    fp8.load_rows(0, linear.weight.detach())
    fp8.bias.data.copy_(linear.bias.detach())
    x = _rows(6, 64, torch.float32, seed=9).cpu()
    q, scale = quantize_per_token(x)
    with torch.no_grad():
        assert torch.equal(fp8(Fp8Activations(q, scale, torch.float32)), fp8(x))


@pytest.mark.parametrize("family", ["llama", "qwen2"])  # qwen2: q/k/v bias after the FP8 product
def test_fp8_decoder_with_fused_quantizers_equals_the_unfused_one(tiny_models, monkeypatch, family):
    """With the fused kernels forced on, an FP8 decoder whose norms and SiLU-mul emit FP8 gives the logits of
    the same decoder whose Fp8Linears quantize the plain kernels' outputs, and its producers are marked."""
    import batchllm.model.layers as layers
    from batchllm.attention.backend import get_attention_backend
    from batchllm.attention.metadata import fresh_prefill_metadata
    from batchllm.kv_cache.cache_tensors import allocate_kv_cache
    from batchllm.model.arch_config import load_arch_config
    from batchllm.model.loader import load_model

    path = tiny_models[family]
    arch = load_arch_config(path)
    model = load_model(path, arch, 128, torch.float32, DEVICE, quantization="fp8")
    producers = [m for layer in model.layers for m in (layer.input_layernorm, layer.post_attention_layernorm,
                                                        layer.mlp)]  # fmt: skip
    assert all(m.fp8_output for m in producers) and not model.norm.fp8_output
    tokens = torch.tensor([5, 17, 300, 42, 7, 99, 1, 250, 64], device=DEVICE)
    meta, positions, num_blocks = fresh_prefill_metadata([6, 3], 16, DEVICE)
    monkeypatch.setattr(layers, "use_fused_kernels", lambda x: True)

    def logits(fused_quantizers: bool) -> torch.Tensor:
        for m in producers:
            m.fp8_output = fused_quantizers
        caches = allocate_kv_cache(arch, num_blocks, 16, torch.float32, DEVICE)
        with torch.no_grad():
            return model(tokens, positions, caches, meta, get_attention_backend("reference"),
                         torch.tensor([5, 8], device=DEVICE))

    fused = logits(True)
    assert torch.isfinite(fused).all()
    assert torch.equal(fused, logits(False))
