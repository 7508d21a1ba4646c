"""Checkpoints stored in FP8 (model/fp8_checkpoint.py): each supported format, written here with safetensors,
loads to the logits of quantizing the same weights at load; unsupported ones are refused by name."""

from __future__ import annotations

import json
import os
import re

import pytest
import torch
from safetensors.torch import load_file, save_file

from batchllm.bench.perplexity import sequence_logits
from batchllm.model.arch_config import load_arch_config
from batchllm.model.fp8 import FP8_MAX, Fp8Linear, Fp8Rows, quantize_weight_per_channel
from batchllm.model.fp8_checkpoint import Fp8CheckpointFormat, _row_scales, parse_quantization_config
from batchllm.model.loader import load_model
from tests.conftest import build_tiny_model

LINEAR = re.compile(r"layers\.\d+\.(self_attn|mlp)\.(q|k|v|o|gate|up|down)_proj\.weight$")
BLOCK = 32
TOKENS = [5, 17, 300, 42, 7, 99, 1, 250, 64, 3, 811, 27]
STATIC_INPUT = {"num_bits": 8, "type": "float", "strategy": "tensor", "dynamic": False, "symmetric": True}


def _compressed_tensors(strategy: str) -> dict:
    weights = {"num_bits": 8, "type": "float", "strategy": strategy, "symmetric": True, "dynamic": False}
    return {"quant_method": "compressed-tensors", "format": "float-quantized", "quantization_status": "compressed",
            "config_groups": {"group_0": {"targets": ["Linear"], "weights": weights, "input_activations": STATIC_INPUT}},
            "ignore": ["lm_head"]}  # fmt: skip


FORMATS = {
    "compressed-tensors-channel": _compressed_tensors("channel"),
    "compressed-tensors-tensor": _compressed_tensors("tensor"),
    "fp8-tensor": {"quant_method": "fp8", "activation_scheme": "static"},
    "fp8-block": {"quant_method": "fp8", "activation_scheme": "dynamic", "weight_block_size": [BLOCK, BLOCK]},
}


def _fp8_tensors(name: str, w: torch.Tensor, fmt: str) -> dict[str, torch.Tensor]:
    base = name.removesuffix(".weight")
    if fmt == "compressed-tensors-channel":
        q, scale = quantize_weight_per_channel(w)
        return {name: q, f"{base}.weight_scale": scale[:, None], f"{base}.input_scale": torch.tensor([0.02])}
    scale = w.abs().max() / FP8_MAX
    q = (w / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    if fmt == "fp8-block":
        blocks = torch.full((w.shape[0] // BLOCK, w.shape[1] // BLOCK), float(scale))
        return {name: q, f"{base}.weight_scale_inv": blocks}
    shape = (1,) if fmt.startswith("compressed") else ()
    return {name: q, f"{base}.weight_scale": scale.reshape(shape), f"{base}.input_scale": torch.tensor(0.02)}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, str]:
    """A tiny Llama in fp32 whose weights quantize the same whatever the scale's granularity: every row of
    a projection (and every 32 x 32 block) holds the projection's largest magnitude M, a different M for
    q, k, v, gate and up (so the fused shards need their own scales). The same model in each FP8 format."""
    root = tmp_path_factory.mktemp("fp8_checkpoints")
    ref = build_tiny_model(str(root / "fp32"), "llama")
    tensors = load_file(os.path.join(ref, "model.safetensors"))
    for name, w in tensors.items():
        if LINEAR.search(name):
            w[:, ::BLOCK] = 1.5 * w.abs().max()
    save_file(tensors, os.path.join(ref, "model.safetensors"), metadata={"format": "pt"})
    folders = {"fp32": ref}
    with open(os.path.join(ref, "config.json")) as f:
        config = json.load(f)
    for fmt, qc in FORMATS.items():
        folder = root / fmt
        folder.mkdir()
        with open(folder / "config.json", "w") as f:
            json.dump(dict(config, quantization_config=qc), f)
        out = {}
        for name, w in tensors.items():
            out.update(_fp8_tensors(name, w, fmt) if LINEAR.search(name) else {name: w})
        save_file(out, str(folder / "model.safetensors"), metadata={"format": "pt"})
        folders[fmt] = str(folder)
    return folders


def _load(folder: str, quantization="fp8"):
    arch = load_arch_config(folder)
    return load_model(folder, arch, 64, torch.float32, torch.device("cpu"), quantization=quantization), arch


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_fp8_checkpoint_gives_the_logits_of_quantizing_at_load(checkpoints, fmt):
    reference, arch = _load(checkpoints["fp32"])
    model, arch8 = _load(checkpoints[fmt])
    assert arch8.fp8_checkpoint is not None and arch.fp8_checkpoint is None
    for (name, a), (_, b) in zip(reference.state_dict().items(), model.state_dict().items()):
        assert torch.equal(a.view(torch.uint8), b.view(torch.uint8)), name
    torch.testing.assert_close(sequence_logits(model, arch, TOKENS, torch.float32),
                               sequence_logits(reference, arch, TOKENS, torch.float32), rtol=0, atol=0)  # fmt: skip


def test_per_tensor_scales_of_fused_shards_become_per_row_scales(checkpoints):
    """q, k and v each come with one scale: the fused qkv_proj's rows carry their shard's."""
    model, arch = _load(checkpoints["fp8-tensor"])
    raw = load_file(os.path.join(checkpoints["fp8-tensor"], "model.safetensors"))
    qkv: Fp8Linear = model.layers[1].self_attn.qkv_proj
    sizes = [arch.q_size, arch.kv_size, arch.kv_size]
    want = torch.cat([raw[f"model.layers.1.self_attn.{p}_proj.weight_scale"].expand(n) for p, n in zip("qkv", sizes)])
    assert torch.equal(qkv.weight_scale, want) and len(set(want.tolist())) == 3
    stored = torch.cat([raw[f"model.layers.1.self_attn.{p}_proj.weight"] for p in "qkv"])
    assert torch.equal(qkv.weight.data.view(torch.uint8), stored.view(torch.uint8))  # the bytes kept as stored


def test_without_quantization_an_fp8_checkpoint_is_dequantized(checkpoints):
    model, _ = _load(checkpoints["compressed-tensors-channel"], quantization=None)
    reference, _ = _load(checkpoints["fp32"], quantization=None)
    assert not any(isinstance(m, Fp8Linear) for m in model.modules())
    a, b = model.layers[0].mlp.down_proj.weight, reference.layers[0].mlp.down_proj.weight
    assert a.dtype == torch.float32 and (a - b).abs().max() <= 2.0**-4 * b.abs().max()


def test_block_scales_multiply_their_blocks():
    torch.manual_seed(0)
    q = (torch.randn(40, 70) * 50).to(torch.float8_e4m3fn)  # 40 x 70: partial blocks at both edges
    scales = torch.rand(3, 5) + 0.5
    dense = _row_scales("w", q, scales, (16, 16))
    for i in range(40):
        for j in range(0, 70, 7):
            assert dense[i, j] == q[i, j].float() * scales[i // 16, j // 16]
    with pytest.raises(ValueError, match=r"w: weight \[40, 70\] has a scale of shape \[2, 5\]"):
        _row_scales("w", q, torch.ones(2, 5), (16, 16))
    per_row = _row_scales("w", q, torch.arange(40.0)[:, None], None)
    assert isinstance(per_row, Fp8Rows) and per_row.scale.shape == (40,)


@pytest.mark.parametrize(
    "qc, message",
    [
        ({"quant_method": "awq", "bits": 4}, r"quant_method='awq' is not supported"),
        ({"quant_method": "fp8", "fmt": "e5m2"}, r"fmt='e5m2' \(only e4m3 weights are read\)"),
        ({"quant_method": "fp8", "weight_block_size": [128]}, r"weight_block_size=\[128\] is not two positive"),
        (dict(_compressed_tensors("channel"), format="pack-quantized"), r"format 'pack-quantized' is not an FP8 one"),
        ({"quant_method": "compressed-tensors", "config_groups": {"g": {"weights": {"num_bits": 8, "type": "int"}}}},
         r"config_groups.g.weights is 8-bit int"),
        ({"quant_method": "compressed-tensors", "config_groups": {"g": {"weights": {
            "num_bits": 8, "type": "float", "strategy": "group"}}}}, r"strategy 'group' \(supported: tensor"),
    ],
)  # fmt: skip
def test_unsupported_quantization_configs_are_refused_by_field(qc, message):
    with pytest.raises(ValueError, match=message) as err:
        parse_quantization_config(qc, "some/model")
    assert "model='some/model'" in str(err.value) and "quantization='fp8' quantizes" in str(err.value)


def test_parsed_formats():
    assert parse_quantization_config(None, "m") is None
    assert parse_quantization_config(FORMATS["fp8-block"], "m") == Fp8CheckpointFormat("fp8", (BLOCK, BLOCK))
    block = _compressed_tensors("block")
    block["config_groups"]["group_0"]["weights"]["block_structure"] = [128, 128]
    assert parse_quantization_config(block, "m") == Fp8CheckpointFormat("compressed-tensors", (128, 128))


def test_an_fp8_weight_without_its_scale_or_of_another_fp8_type_is_refused(checkpoints, tmp_path):
    src = checkpoints["fp8-tensor"]
    tensors = load_file(os.path.join(src, "model.safetensors"))
    os.symlink(os.path.join(src, "config.json"), tmp_path / "config.json")
    del tensors["model.layers.0.mlp.up_proj.weight_scale"]
    save_file(tensors, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match=r"FP8 weights without a weight_scale / weight_scale_inv: "
                                         r"\['model.layers.0.mlp.up_proj.weight'\]"):  # fmt: skip
        _load(str(tmp_path))
    tensors["model.layers.0.mlp.up_proj.weight"] = tensors["model.layers.0.mlp.up_proj.weight"].to(torch.float8_e5m2)
    save_file(tensors, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match=r"up_proj.weight is torch.float8_e5m2; only float8_e4m3fn FP8 weights"):
        _load(str(tmp_path))


def test_llm_runs_an_fp8_checkpoint_in_fp8_unasked(checkpoints):
    """quantization unset: a checkpoint with an FP8 quantization_config runs in FP8 (as vLLM), and generates
    the tokens of the full-precision checkpoint quantized at load."""
    from batchllm import LLM, SamplingParams

    kw = dict(device="cpu", skip_tokenizer_init=True)
    stored = LLM(checkpoints["compressed-tensors-channel"], **kw)
    at_load = LLM(checkpoints["fp32"], quantization="fp8", **kw)
    assert stored.config.quantization == at_load.config.quantization == "fp8"
    prompts = [{"prompt_token_ids": [7 + i, 300, 42, 9 * i + 1]} for i in range(4)]
    params = SamplingParams(temperature=0, max_tokens=8)
    want = [o.outputs[0].token_ids for o in at_load.generate(prompts, params, use_tqdm=False)]
    assert [o.outputs[0].token_ids for o in stored.generate(prompts, params, use_tqdm=False)] == want
