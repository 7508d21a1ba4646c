"""Build our decoder from a HF folder (safetensors, single or sharded), a GGUF file, or dummy weights."""

from __future__ import annotations

import glob
import json
import os
import re
from typing import Iterator, Optional, Union

import torch

from batchllm.kv_cache.fp8 import CheckpointKVScales
from batchllm.model.arch_config import ArchConfig
from batchllm.model.decoder import DecoderForCausalLM
from batchllm.model.fp8 import Fp8Linear, Fp8Rows, use_fp8_linears
from batchllm.model.fp8_checkpoint import Fp8TensorPairer
from batchllm.model.layers import RotaryEmbedding
from batchllm.model.tokenizer import gguf_hf_config, is_gguf_path

# HF checkpoint name -> (our parameter name, shard index within a fused parameter or None)
_FUSED = {
    "q_proj": ("qkv_proj", 0),
    "k_proj": ("qkv_proj", 1),
    "v_proj": ("qkv_proj", 2),
    "gate_proj": ("gate_up_proj", 0),
    "up_proj": ("gate_up_proj", 1),
}
_LAYER_NAME = re.compile(r"^(?:model\.)?layers\.(\d+)\.(self_attn|mlp)\.(\w+)\.(weight|bias)$")


def _build_empty(
    cfg: ArchConfig, max_positions: int, dtype: torch.dtype, device: torch.device, quantization: Optional[str] = None
) -> DecoderForCausalLM:
    with torch.device("meta"):
        model = DecoderForCausalLM(cfg, max_positions)
    model = model.to(dtype=dtype)
    if quantization == "fp8":
        # Swapped while on meta: the full-precision weights of these layers are never allocated (a 70B
        # model fits one H200 only so); each is quantized as it is loaded.
        use_fp8_linears(model)
    model = model.to_empty(device=device)
    # Meta tensors have no values: rebuild the rotary tables (kept in the compute dtype, as transformers casts them).
    fresh = RotaryEmbedding(cfg.head_dim, max_positions, cfg.rope_theta, cfg.rope_scaling)
    model.rope.cos_cache = fresh.cos_cache.to(device)
    model.rope.sin_cache = fresh.sin_cache.to(device)
    return model


def _shard_sizes(cfg: ArchConfig, fused: str) -> list[int]:
    if fused == "qkv_proj":
        return [cfg.q_size, cfg.kv_size, cfg.kv_size]
    return [cfg.intermediate_size, cfg.intermediate_size]


def _fp8_modules(model: torch.nn.Module) -> dict[str, Fp8Linear]:
    """weight parameter name -> its Fp8Linear, for the layers that run in FP8."""
    return {f"{name}.weight": m for name, m in model.named_modules() if isinstance(m, Fp8Linear)}


def _copy_rows(
    params: dict[str, torch.nn.Parameter], fp8: dict[str, Fp8Linear], target: str, offset: Optional[int],
    value: Union[torch.Tensor, Fp8Rows],
) -> None:  # fmt: skip
    """value into rows [offset, offset + len) of `target` (offset None: the whole parameter). An FP8 layer
    quantizes a float block (or takes FP8 rows with their scales); any other parameter takes FP8 rows
    dequantized."""
    if target in fp8:
        fp8[target].load_rows(offset or 0, value)
        return
    if isinstance(value, Fp8Rows):
        value = value.dequantize(params[target].dtype)
    param = params[target].data
    (param if offset is None else param[offset : offset + value.shape[0]]).copy_(value)


def load_named_tensor(
    params: dict[str, torch.nn.Parameter], cfg: ArchConfig, name: str, tensor: Union[torch.Tensor, Fp8Rows],
    fp8_modules: Optional[dict[str, Fp8Linear]] = None,
) -> Optional[str]:  # fmt: skip
    """Copy one checkpoint tensor into its (possibly fused) parameter; returns that parameter's name, None if
    the checkpoint name is not one of ours. `params` is the model's named_parameters() as a dict;
    `fp8_modules` (from `_fp8_modules`) the layers whose weights are FP8."""
    fp8 = fp8_modules or {}
    match = _LAYER_NAME.match(name)
    if match:
        layer, block, proj, kind = match.groups()
        if proj in _FUSED:
            fused, shard = _FUSED[proj]
            target_name = f"layers.{layer}.{block}.{fused}.{kind}"
            sizes = _shard_sizes(cfg, fused)
            offset = sum(sizes[:shard])
            rows = (tensor.weight if isinstance(tensor, Fp8Rows) else tensor).shape[0]
            if rows != sizes[shard]:
                raise ValueError(f"{name}: {rows} rows, expected {sizes[shard]}")
            _copy_rows(params, fp8, target_name, offset, tensor)
            return target_name
    local = name.removeprefix("model.")
    if local == "lm_head.weight" and cfg.tie_word_embeddings:
        return local  # tied: the embedding serves as lm_head
    if local not in params:
        return None
    _copy_rows(params, fp8, local, None, tensor)
    return local


def _safetensors_files(folder: str) -> list[str]:
    index = os.path.join(folder, "model.safetensors.index.json")
    if os.path.isfile(index):
        return _indexed_shards(folder, index)
    files = sorted(glob.glob(os.path.join(glob.escape(folder), "*.safetensors")))
    if not files:
        raise ValueError(f"model={folder!r}: no *.safetensors weights in the folder (use load_format='dummy' for random weights)")
    return files


def _indexed_shards(folder: str, index: str) -> list[str]:
    """The shard files a model.safetensors.index.json names, each an existing file inside `folder`.

    The index is data from wherever the model came from: a shard name like "../../x", an absolute path or
    a path through a symlinked directory must not make us read files outside the model folder. The shard
    file itself may be a symlink: the Hugging Face cache links each snapshot's files to its blobs folder.
    """
    try:
        with open(index) as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{index}: not valid JSON ({err}); fix or delete the index file") from err
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise ValueError(f"{index}: no 'weight_map' object (tensor name -> shard file); fix or delete the index file")
    names = set()
    for shard in weight_map.values():
        if not isinstance(shard, str) or not shard:
            raise ValueError(f"{index}: weight_map value {shard!r} is not a shard file name")
        names.add(shard)
    root = os.path.realpath(folder)
    files = []
    for name in sorted(names):
        path = os.path.join(os.path.realpath(os.path.dirname(os.path.join(root, name))), os.path.basename(name))
        if os.path.commonpath([root, path]) != root or os.path.basename(name) in ("", ".", ".."):
            raise ValueError(f"{index}: shard {name!r} resolves outside the model folder {folder!r}")
        if not os.path.isfile(path):
            raise ValueError(f"{index}: shard {name!r} does not exist in the model folder {folder!r}")
        files.append(path)
    return files


def _iter_safetensors(folder: str) -> Iterator[tuple[str, torch.Tensor]]:
    from safetensors import safe_open

    for path in _safetensors_files(folder):
        with safe_open(path, framework="pt", device="cpu") as f:
            for name in f.keys():
                yield name, f.get_tensor(name)


def _iter_gguf(path: str) -> Iterator[tuple[str, torch.Tensor]]:
    """Dequantized tensors under their HF names, via transformers' GGUF reader (uses the `gguf` package)."""
    from transformers import AutoModelForCausalLM
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    hf_config = gguf_hf_config(path)
    with torch.device("meta"):
        # A meta model costs no memory; transformers needs it only for the GGUF -> HF name map.
        skeleton = AutoModelForCausalLM.from_config(hf_config, trust_remote_code=False)
    tensors = load_gguf_checkpoint(path, return_tensors=True, model_to_load=skeleton)["tensors"]
    yield from tensors.items()


def iter_checkpoint_tensors(model_path: str) -> Iterator[tuple[str, torch.Tensor]]:
    """(Hugging Face name, tensor) of every tensor a folder's safetensors or a .gguf file holds (dequantized)."""
    return _iter_gguf(model_path) if is_gguf_path(model_path) else _iter_safetensors(model_path)


def init_dummy_weights(model: DecoderForCausalLM, seed: int) -> None:
    """Small uniform random weights (norms at 1): stable activations, real shapes, real speed.

    An FP8 layer's weight is drawn in the model dtype one layer at a time and quantized (the same draws as
    the unquantized model's, so its dummy weights are those quantized)."""
    dtype = model.embed_tokens.weight.dtype
    generator = torch.Generator(device=model.embed_tokens.weight.device).manual_seed(seed)
    fp8 = _fp8_modules(model)
    for name, param in model.named_parameters():
        if name.endswith("norm.weight"):
            param.data.fill_(1.0)
        elif name in fp8:
            draw = torch.empty(param.shape, dtype=dtype, device=param.device).uniform_(-1e-3, 1e-3, generator=generator)
            fp8[name].load_rows(0, draw)
            del draw  # freed before the next layer's: one layer's full-precision weight at a time
        else:
            param.data.uniform_(-1e-3, 1e-3, generator=generator)


def load_model(
    model_path: str,
    cfg: ArchConfig,
    max_positions: int,
    dtype: torch.dtype,
    device: torch.device,
    load_format: str = "auto",
    seed: int = 0,
    quantization: Optional[str] = None,
) -> DecoderForCausalLM:
    """The decoder with its weights on `device`. quantization="fp8": the decoder linears in FP8, each weight
    quantized as it is read (a checkpoint already in FP8 keeps its values and scales, see fp8_checkpoint.py);
    without it, an FP8 checkpoint's weights are dequantized into the model dtype."""
    model = _build_empty(cfg, max_positions, dtype, device, quantization)
    if load_format == "dummy":
        init_dummy_weights(model, seed)
        return model.eval()
    tensors = iter_checkpoint_tensors(model_path)
    params, fp8 = dict(model.named_parameters()), _fp8_modules(model)
    # KV-cache scales (self_attn.k_scale / v_scale / kv_scale) are no parameters: kept for an FP8 KV cache.
    kv_scales = CheckpointKVScales()
    # FP8 checkpoint weights wait for their scales (and scales for their weights): the pairer joins them.
    pairer = Fp8TensorPairer(cfg.fp8_checkpoint, device, model_path)
    loaded = set()
    for name, tensor in tensors:
        if kv_scales.offer(name, tensor):
            continue
        for weight_name, value in pairer.feed(name, tensor):
            value = value if isinstance(value, Fp8Rows) else value.to(dtype)
            loaded.add(load_named_tensor(params, cfg, weight_name, value, fp8))
    pairer.finish()
    missing = set(params) - loaded
    if missing:
        raise ValueError(f"model={model_path!r}: checkpoint lacks weights for {sorted(missing)[:5]} ...")
    model.kv_cache_scales = kv_scales
    return model.eval()

