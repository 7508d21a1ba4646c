"""A real FP8 checkpoint made from the packaged SmolLM2 (model/fp8_export.py): it is read back as FP8
without being asked and gives the logits of quantizing the same weights at load."""

from __future__ import annotations

import json
import os

import pytest
import torch

from batchllm import LLM, SamplingParams
from batchllm.bench.perplexity import sequence_logits
from batchllm.model.fp8 import Fp8Linear
from batchllm.model.fp8_checkpoint import parse_quantization_config
from batchllm.model.fp8_export import write_fp8_checkpoint


@pytest.fixture(scope="module")
def smollm2_fp8(tmp_path_factory, gguf_path) -> str:
    return write_fp8_checkpoint(gguf_path, str(tmp_path_factory.mktemp("smollm2-fp8")), dtype=torch.float32)


def test_the_checkpoint_is_compressed_tensors_fp8_per_channel(smollm2_fp8):
    with open(os.path.join(smollm2_fp8, "config.json")) as f:
        config = json.load(f)
    assert parse_quantization_config(config["quantization_config"], smollm2_fp8).method == "compressed-tensors"
    from safetensors import safe_open

    with safe_open(os.path.join(smollm2_fp8, "model.safetensors"), framework="pt") as f:
        w = f.get_tensor("model.layers.0.mlp.down_proj.weight")
        scale = f.get_tensor("model.layers.0.mlp.down_proj.weight_scale")
        assert w.dtype == torch.float8_e4m3fn and scale.shape == (w.shape[0], 1)
        assert f.get_tensor("model.embed_tokens.weight").dtype == torch.float32  # what is not a linear stays


def test_it_loads_as_fp8_unasked_with_the_logits_of_quantizing_at_load(smollm2_fp8, gguf_path):
    from_checkpoint = LLM(smollm2_fp8, dtype="float32", device="cpu")
    at_load = LLM(gguf_path, dtype="float32", device="cpu", quantization="fp8")
    assert from_checkpoint.config.quantization == "fp8"
    assert any(isinstance(m, Fp8Linear) for m in from_checkpoint.engine.runner.model.modules())
    tokens = from_checkpoint.tokenizer.encode("The tide rises twice a day because the moon pulls the sea.")
    logits = [sequence_logits(llm.engine.runner.model, llm.engine.runner.arch, tokens, torch.float32)
              for llm in (from_checkpoint, at_load)]  # fmt: skip
    torch.testing.assert_close(logits[0], logits[1], rtol=0, atol=1e-4)
    params = SamplingParams(temperature=0, max_tokens=16)
    chat = [[{"role": "user", "content": "What is the capital of France?"}]]
    a, b = (llm.chat(chat, params, use_tqdm=False)[0].outputs[0] for llm in (from_checkpoint, at_load))
    assert a.token_ids == b.token_ids and "Paris" in a.text


def test_refuses_a_quantized_source_and_a_used_folder(smollm2_fp8, tmp_path):
    with pytest.raises(ValueError, match="already quantized"):
        write_fp8_checkpoint(smollm2_fp8, str(tmp_path / "again"))
    with pytest.raises(ValueError, match="already holds a model.safetensors"):
        write_fp8_checkpoint(os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks", "models", "tiny-llama"),
                             smollm2_fp8)  # fmt: skip
