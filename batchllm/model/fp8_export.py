"""Write a model as an FP8 checkpoint in the compressed-tensors format most published FP8 checkpoints use
(what llm-compressor's FP8_DYNAMIC scheme writes): the decoder's linear weights in float8_e4m3fn with one
fp32 scale per output channel (`weight_scale` [N, 1], the same rule as `quantization="fp8"` at load),
activations dynamic per token, every other tensor as it was. This engine reads it as FP8 without being
asked (tests/model/test_fp8_export.py); it follows the compressed-tensors layout vLLM reads, but has not
been run there. It makes a real FP8 checkpoint from any supported model folder or GGUF file.
"""

from __future__ import annotations

import json
import os
import re

import torch

from batchllm.model.arch_config import gguf_config_dict
from batchllm.model.fp8 import quantize_weight_per_channel
from batchllm.model.loader import iter_checkpoint_tensors
from batchllm.model.tokenizer import is_gguf_path, load_tokenizer

# The decoder's linear weights, under their Hugging Face names (separate q/k/v and gate/up, as stored).
LINEAR_WEIGHT = re.compile(r"\.layers\.\d+\.(self_attn|mlp)\.(q|k|v|o|gate|up|down)_proj\.weight$")

QUANTIZATION_CONFIG = {
    "quant_method": "compressed-tensors",
    "format": "float-quantized",
    "quantization_status": "compressed",
    "config_groups": {"group_0": {
        "targets": ["Linear"],
        "weights": {"num_bits": 8, "type": "float", "strategy": "channel", "symmetric": True, "dynamic": False},
        "input_activations": {"num_bits": 8, "type": "float", "strategy": "token", "symmetric": True, "dynamic": True},
    }},
    "ignore": ["lm_head"],
}  # fmt: skip


def _source_config(model: str) -> dict:
    if is_gguf_path(model):
        return gguf_config_dict(model)
    with open(os.path.join(model, "config.json")) as f:
        return json.load(f)


def write_fp8_checkpoint(model: str, out_dir: str, dtype: torch.dtype = torch.bfloat16) -> str:
    """`model` (a Hugging Face folder or a .gguf file) as an FP8 checkpoint folder `out_dir` (created; it must
    not hold a checkpoint yet): config.json with `quantization_config`, model.safetensors, and the model's
    tokenizer when it has one. Tensors that stay full precision are stored in `dtype`. Returns `out_dir`.
    ValueError for a model already quantized."""
    from safetensors.torch import save_file

    config = _source_config(model)
    if config.get("quantization_config") is not None:
        raise ValueError(f"model={model!r} is already quantized ({config['quantization_config'].get('quant_method')}); "
                         "give its full-precision checkpoint")  # fmt: skip
    if os.path.exists(os.path.join(out_dir, "model.safetensors")):
        raise ValueError(f"out_dir={out_dir!r} already holds a model.safetensors; choose an empty folder")
    os.makedirs(out_dir, exist_ok=True)
    tensors = {}
    for name, tensor in iter_checkpoint_tensors(model):
        if LINEAR_WEIGHT.search(name):
            q, scale = quantize_weight_per_channel(tensor)
            tensors[name] = q
            tensors[name.removesuffix(".weight") + ".weight_scale"] = scale[:, None]
        else:
            tensors[name] = tensor.to(dtype) if tensor.is_floating_point() else tensor
    save_file(tensors, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
    config = dict(config, quantization_config=QUANTIZATION_CONFIG, torch_dtype=str(dtype).removeprefix("torch."))
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    try:
        load_tokenizer(model).save_pretrained(out_dir)
    except ValueError:
        pass  # a folder without a tokenizer: the checkpoint has none either (skip_tokenizer_init=True reads it)
    return out_dir
