"""The architecture facts our model needs, read from a Hugging Face config (folder or GGUF)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Optional

from batchllm.model.fp8_checkpoint import Fp8CheckpointFormat, parse_quantization_config
from batchllm.model.tokenizer import gguf_hf_config, is_gguf_path

# architecture name in config.json -> (family, q/k RMSNorm, qkv bias default)
SUPPORTED_ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
}


@dataclass(frozen=True)
class ArchConfig:
    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: Optional[dict]
    max_position_embeddings: int
    tie_word_embeddings: bool
    qkv_bias: bool
    qk_norm: bool
    sliding_window: Optional[int]
    torch_dtype: Optional[str]
    eos_token_ids: tuple[int, ...]
    # The checkpoint's own FP8 format (config.json quantization_config); None for a full-precision one.
    fp8_checkpoint: Optional[Fp8CheckpointFormat] = None

    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim

    def kv_bytes_per_token(self, dtype_bytes: int) -> int:
        return 2 * self.num_layers * self.kv_size * dtype_bytes

    def linear_params(self) -> int:
        """Parameters of the decoder layers' linear layers (what quantization='fp8' stores in one byte each)."""
        per_layer = (
            self.hidden_size * (self.q_size + 2 * self.kv_size)
            + self.q_size * self.hidden_size
            + 3 * self.hidden_size * self.intermediate_size
        )
        return self.num_layers * per_layer

    def num_params(self) -> int:
        embed = self.vocab_size * self.hidden_size * (1 if self.tie_word_embeddings else 2)
        return self.linear_params() + embed

    def weight_bytes(self, dtype_bytes: int, fp8_linears: bool = False) -> int:
        """Bytes of the weights in a `dtype_bytes` dtype; with fp8_linears, the decoder linears take one byte
        a parameter (their per-channel scales are negligible) and the embeddings / lm_head stay in the dtype."""
        linear = self.linear_params()
        return linear * (1 if fp8_linears else dtype_bytes) + (self.num_params() - linear) * dtype_bytes


def _as_id_tuple(value: Any) -> tuple[int, ...]:
    if value is None:
        return ()
    if isinstance(value, int):
        return (value,)
    return tuple(int(v) for v in value)


def _rope_params(cfg: dict) -> tuple[float, Optional[dict]]:
    """rope_theta and scaling dict from either the transformers-4 or the transformers-5 layout."""
    params = cfg.get("rope_parameters")
    if isinstance(params, dict) and params:
        theta = float(params.get("rope_theta", cfg.get("rope_theta", 10000.0)))
        rope_type = params.get("rope_type", params.get("type", "default"))
        scaling = None if rope_type == "default" else dict(params, rope_type=rope_type)
        return theta, scaling
    scaling = cfg.get("rope_scaling")
    if scaling:
        scaling = dict(scaling)
        scaling.setdefault("rope_type", scaling.get("type", "default"))
        if scaling["rope_type"] == "default":
            scaling = None
    return float(cfg.get("rope_theta", 10000.0)), scaling


def arch_config_from_dict(cfg: dict, generation_eos: tuple[int, ...] = (), model: str = "") -> ArchConfig:
    archs = cfg.get("architectures") or []
    arch = next((a for a in archs if a in SUPPORTED_ARCHITECTURES), None)
    if arch is None:
        raise ValueError(
            f"unsupported architecture {archs or cfg.get('model_type')!r}; "
            f"supported: {sorted(SUPPORTED_ARCHITECTURES)}"
        )
    family = SUPPORTED_ARCHITECTURES[arch]
    num_heads = int(cfg["num_attention_heads"])
    hidden = int(cfg["hidden_size"])
    rope_theta, rope_scaling = _rope_params(cfg)
    if rope_scaling is not None and rope_scaling["rope_type"] not in ("llama3", "linear"):
        raise ValueError(f"rope scaling {rope_scaling['rope_type']!r} is not supported; supported: llama3, linear")
    sliding = cfg.get("sliding_window")
    if family == "qwen2" and not cfg.get("use_sliding_window", False):
        sliding = None
    head_dim = cfg.get("head_dim") or hidden // num_heads
    eos = generation_eos or _as_id_tuple(cfg.get("eos_token_id"))
    return ArchConfig(
        architecture=arch,
        vocab_size=int(cfg["vocab_size"]),
        hidden_size=hidden,
        intermediate_size=int(cfg["intermediate_size"]),
        num_layers=int(cfg["num_hidden_layers"]),
        num_heads=num_heads,
        num_kv_heads=int(cfg.get("num_key_value_heads") or num_heads),
        head_dim=int(head_dim),
        rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        rope_theta=rope_theta,
        rope_scaling=rope_scaling,
        max_position_embeddings=int(cfg.get("max_position_embeddings", 4096)),
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        qkv_bias=bool(cfg.get("attention_bias", family == "qwen2")),
        qk_norm=family == "qwen3",
        sliding_window=int(sliding) if sliding else None,
        torch_dtype=cfg.get("torch_dtype") or cfg.get("dtype"),
        eos_token_ids=eos,
        fp8_checkpoint=parse_quantization_config(cfg.get("quantization_config"), model),
    )


def gguf_config_dict(path: str) -> dict:
    """A .gguf file's metadata as a config.json dict, `architectures` filled in from its model type."""
    cfg = gguf_hf_config(path).to_dict()
    if not cfg.get("architectures"):
        cfg["architectures"] = [_GGUF_MODEL_TYPES.get(cfg.get("model_type"), cfg.get("model_type"))]
    return cfg


def load_arch_config(model: str) -> ArchConfig:
    """Read config.json (+ generation_config.json eos ids) from a folder, or the metadata of a .gguf file."""
    if is_gguf_path(model):
        return arch_config_from_dict(gguf_config_dict(model))
    if not os.path.isdir(model):
        raise ValueError(f"model={model!r}: no such folder or .gguf file")
    config_path = os.path.join(model, "config.json")
    if not os.path.isfile(config_path):
        raise ValueError(f"model={model!r}: the folder has no config.json (is it a Hugging Face model folder?)")
    with open(config_path) as f:
        cfg = json.load(f)
    generation_eos: tuple[int, ...] = ()
    gen_path = os.path.join(model, "generation_config.json")
    if os.path.isfile(gen_path):
        with open(gen_path) as f:
            generation_eos = _as_id_tuple(json.load(f).get("eos_token_id"))
    return arch_config_from_dict(cfg, generation_eos, model)


_GGUF_MODEL_TYPES = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
}
