"""The packaged SmolLM2-135M-Instruct GGUF: our greedy chat output equals transformers' on the same file."""

from __future__ import annotations

import os

import torch

from batchllm import LLM, SamplingParams

QUESTIONS = ["What is the capital of France?", "Name three primary colors.", "What is 2 + 2?"]


def test_gguf_chat_equals_transformers(gguf_path):
    from transformers import AutoModelForCausalLM

    llm = LLM(gguf_path, device="cpu", dtype="float32", max_model_len=512)
    conversations = [[{"role": "user", "content": q}] for q in QUESTIONS]
    outputs = llm.chat(conversations, SamplingParams(temperature=0, max_tokens=24), use_tqdm=False)
    assert "Paris" in outputs[0].outputs[0].text

    folder, name = os.path.split(gguf_path)
    hf = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).eval()
    eos = llm.engine.eos_token_ids
    for out in outputs:
        ids = torch.tensor([out.prompt_token_ids])
        ref = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=24, do_sample=False,
                          eos_token_id=eos, pad_token_id=eos[0])[0, ids.shape[1]:].tolist()
        if ref[-1] in eos:
            ref = ref[: ref.index(ref[-1]) + 1]
        ref = [t for i, t in enumerate(ref) if not (t in eos and i > 0 and ref[i - 1] in eos)]
        assert out.outputs[0].token_ids == ref
        assert out.outputs[0].finish_reason == ("stop" if ref[-1] in eos else "length")
