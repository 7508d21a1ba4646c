"""FP8 W8A8 linear layers (model/fp8.py): the quantization rule and its error bound, the reference Fp8Linear
against the full-precision linear, the Triton activation quantizer, and quantizing at load."""

from __future__ import annotations

import pytest
import torch

from batchllm.model.arch_config import load_arch_config
from batchllm.model.fp8 import (
    FP8_MAX,
    MIN_AMAX,
    Fp8Linear,
    dequantize_rows,
    quantize_linears_,
    quantize_per_token,
    quantize_rows,
    quantize_weight_per_channel,
)
from batchllm.model.loader import load_model

# e4m3 keeps 3 mantissa bits: a normal value (|x| / scale >= 2^-6) rounds to within half a step, 2^-4 of |x|;
# below that (subnormals) the step is 2^-9 of the scale, so the error is at most 2^-10 * scale.
REL = 2.0**-4
SUBNORMAL_ABS = 2.0**-10


def _wide_rows(rows: int, cols: int, seed: int) -> torch.Tensor:
    """Gaussian rows at scales from 1e-3 to 1e3, with a zero row and a few near-zero entries."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, cols, generator=g) * 10.0 ** (torch.rand(rows, 1, generator=g) * 6 - 3)
    x[0] = 0.0
    x[1, :5] = torch.tensor([1e-9, -1e-7, 0.0, 3e-5, -2e-6]) * x[1].abs().max()
    return x


def _error_bound(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return REL * x.abs() + SUBNORMAL_ABS * scale.reshape(-1, 1)


def test_round_trip_error_is_within_the_e4m3_bound():
    x = _wide_rows(64, 300, seed=0)
    q, scale = quantize_weight_per_channel(x)
    assert q.dtype == torch.float8_e4m3fn and scale.dtype == torch.float32 and scale.shape == (64,)
    back = dequantize_rows(q, scale)
    assert torch.isfinite(back).all()
    assert ((back - x).abs() <= _error_bound(x, scale)).all()
    # Each row's largest magnitude maps to 448 (the format's largest finite value): the whole range is used.
    assert torch.equal(q[1:].float().abs().amax(dim=1), torch.full((63,), FP8_MAX))
    assert torch.equal(back[0], torch.zeros(300)) and scale[0] == MIN_AMAX / FP8_MAX  # zero row: finite scale
    normal = x.abs() >= 2.0**-6 * scale[:, None]
    rel = ((back - x).abs() / x.abs())[normal]
    assert rel.max() <= REL and rel.mean() < 0.03  # measured mean: about 0.021


def test_per_token_quant_is_the_same_rule_with_column_scales():
    x = _wide_rows(9, 64, seed=1).to(torch.bfloat16)
    q, scale = quantize_per_token(x)
    q_rows, scale_rows = quantize_rows(x)
    assert scale.shape == (9, 1) and torch.equal(scale[:, 0], scale_rows)
    assert torch.equal(q.view(torch.uint8), q_rows.view(torch.uint8))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("cols", [64, 576, 4100])  # 4100: three 2048-wide chunks, the last one partial
def test_triton_quantizer_equals_the_pytorch_rule(dtype, cols):
    """The GPU's fused kernel (here in Triton's interpreter on CPU) writes the same bytes and scales."""
    pytest.importorskip("triton")
    from batchllm.model.fp8_triton import per_token_quant_fp8

    device = "cuda" if torch.cuda.is_available() else "cpu"
    x = _wide_rows(6, cols, seed=cols).to(dtype).to(device)
    q, scale = per_token_quant_fp8(x, MIN_AMAX)
    q_ref, scale_ref = quantize_rows(x)
    assert torch.equal(scale[:, 0], scale_ref)
    # The same values, compared as floats: under the interpreter a tiny negative that rounds to zero comes out +0.
    assert torch.equal(q.float(), q_ref.float())
    empty_q, empty_scale = per_token_quant_fp8(x[:0], MIN_AMAX)
    assert empty_q.shape == (0, cols) and empty_scale.shape == (0, 1)


def _fp8_of(linear: torch.nn.Linear) -> Fp8Linear:
    fp8 = Fp8Linear.like(linear)
    fp8.load_rows(0, linear.weight.detach())
    if linear.bias is not None:
        fp8.bias.data.copy_(linear.bias.detach())
    return fp8


def test_reference_fp8_linear_is_within_the_product_bound_of_the_fp32_linear():
    """|y8 - y| <= sum_k (e_x |w| + |x| e_w + e_x e_w), e_x, e_w each element's round-trip bound (2^-4 of it,
    plus the subnormal term), plus fp32 summation slack. Typical (RMS) relative error: about 3.6 %."""
    torch.manual_seed(0)
    linear = torch.nn.Linear(256, 96, bias=True)
    x = torch.randn(3, 7, 256) * 4
    fp8 = _fp8_of(linear)
    with torch.no_grad():
        y, y8 = linear(x), fp8(x)
    assert y8.shape == y.shape == (3, 7, 96) and y8.dtype == torch.float32
    x2 = x.reshape(-1, 256)
    _, sx = quantize_rows(x2)
    e_x = _error_bound(x2, sx)
    w = linear.weight.detach()
    e_w = _error_bound(w, fp8.weight_scale)
    bound = e_x @ w.abs().t() + x2.abs() @ e_w.t() + e_x @ e_w.t()
    err = (y8 - y).detach().reshape(-1, 96).abs()
    assert (err <= bound * (1 + 1e-5) + 1e-5).all()
    rel = float((y8 - y).norm() / (y - linear.bias).norm())
    assert rel < 0.06, rel


def test_fp8_linear_keeps_the_activation_dtype_and_adds_the_bias_after():
    torch.manual_seed(1)
    linear = torch.nn.Linear(64, 32, bias=True).to(torch.bfloat16)
    fp8 = _fp8_of(linear)
    x = torch.randn(5, 64, dtype=torch.bfloat16)
    out = fp8(x)
    assert out.dtype == torch.bfloat16 and fp8.bias.dtype == torch.bfloat16
    without_bias = out.float() - fp8.bias.float()
    xq, sx = quantize_per_token(x)
    manual = (xq.float() @ fp8.weight.float().t()) * sx * fp8.weight_scale
    torch.testing.assert_close(without_bias, manual, atol=0.02, rtol=0.01)  # bf16 rounding of the output
    assert fp8(x[:0]).shape == (0, 32)


def test_load_rows_writes_shards_with_their_own_scales():
    fp8 = Fp8Linear(16, 48, bias=False)
    shards = [torch.randn(16, 16) * s for s in (0.01, 1.0, 100.0)]
    for i, shard in enumerate(shards):
        fp8.load_rows(16 * i, shard)
    for i, shard in enumerate(shards):
        q, scale = quantize_weight_per_channel(shard)
        assert torch.equal(fp8.weight.data[16 * i : 16 * (i + 1)].view(torch.uint8), q.view(torch.uint8))
        assert torch.equal(fp8.weight_scale[16 * i : 16 * (i + 1)], scale)
    with pytest.raises(ValueError, match=r"rows \[40, 56\) x 16 do not fit a weight of shape \[48, 16\]"):
        fp8.load_rows(40, shards[0])


@pytest.mark.parametrize("family", ["llama", "qwen2"])  # qwen2: q/k/v bias and tied embeddings
def test_quantizing_at_load_equals_quantizing_the_loaded_model(tiny_models, family):
    """Every decoder linear becomes an Fp8Linear holding its weight quantized per row; lm_head, embeddings
    and norms stay full precision. A checkpoint quantized as it is read gives the bytes of quantizing the
    loaded full-precision model (the in-place path the tests and the GPU check use to save a load)."""
    path = tiny_models[family]
    arch = load_arch_config(path)
    fp8 = load_model(path, arch, 64, torch.float32, torch.device("cpu"), quantization="fp8")
    full = load_model(path, arch, 64, torch.float32, torch.device("cpu"))
    quantize_linears_(full)
    fp8_params = dict(fp8.named_parameters())
    for name, tensor in list(full.named_parameters()) + list(full.named_buffers()):
        other = fp8_params.get(name, dict(fp8.named_buffers()).get(name))
        assert other is not None and other.dtype == tensor.dtype, name
        assert torch.equal(other.view(torch.uint8), tensor.view(torch.uint8)), name
    linears = [m for m in fp8.modules() if isinstance(m, Fp8Linear)]
    assert len(linears) == 4 * arch.num_layers
    assert fp8.embed_tokens.weight.dtype == torch.float32 and not isinstance(getattr(fp8, "lm_head", None), Fp8Linear)
    assert sum(m.weight.numel() for m in linears) == arch.linear_params()
    if family == "qwen2":
        assert linears[0].bias is not None and linears[0].bias.dtype == torch.float32


def test_dummy_fp8_weights_are_the_dummy_weights_quantized(tiny_models):
    arch = load_arch_config(tiny_models["llama"])
    kw = dict(load_format="dummy", seed=3)
    fp8 = load_model(tiny_models["llama"], arch, 64, torch.bfloat16, torch.device("cpu"), quantization="fp8", **kw)
    full = load_model(tiny_models["llama"], arch, 64, torch.bfloat16, torch.device("cpu"), **kw)
    quantize_linears_(full)
    for (name, a), (_, b) in zip(fp8.state_dict().items(), full.state_dict().items()):
        assert torch.equal(a.view(torch.uint8), b.view(torch.uint8)), name
    assert arch.weight_bytes(2, fp8_linears=True) == arch.weight_bytes(2) - arch.linear_params()
