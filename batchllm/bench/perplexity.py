"""Teacher-forced log-likelihood of a token sequence under a loaded decoder (the engine returns no prompt
logprobs): one prefill of the whole sequence through the model module, reference attention, its own KV."""

from __future__ import annotations

import math

import torch

from batchllm.attention.backend import get_attention_backend
from batchllm.attention.metadata import fresh_prefill_metadata
from batchllm.kv_cache.cache_tensors import allocate_kv_cache
from batchllm.model.arch_config import ArchConfig
from batchllm.model.decoder import DecoderForCausalLM


@torch.no_grad()
def sequence_logits(
    model: DecoderForCausalLM, arch: ArchConfig, tokens: list[int], dtype: torch.dtype, block_size: int = 16
) -> torch.Tensor:
    """fp32 logits [len(tokens), vocab]: row i is the next-token distribution after tokens[: i + 1]."""
    device = model.embed_tokens.weight.device
    meta, positions, blocks = fresh_prefill_metadata([len(tokens)], block_size, device)
    caches = allocate_kv_cache(arch, blocks, block_size, dtype, device)
    ids = torch.tensor(tokens, device=device)
    return model(ids, positions, caches, meta, get_attention_backend("reference"), positions)


def perplexity(
    model: DecoderForCausalLM, arch: ArchConfig, tokens: list[int], dtype: torch.dtype, window: int = 1024
) -> float:
    """exp(mean negative log-likelihood of each token given what precedes it in its window): the text cut
    into consecutive windows of `window` tokens (the first token of each is context only), so a text longer
    than the model's positions can be measured."""
    total, count = 0.0, 0
    for start in range(0, len(tokens) - 1, window):
        piece = tokens[start : start + window]
        if len(piece) < 2:
            break
        logits = sequence_logits(model, arch, piece, dtype)[:-1]
        target = torch.tensor(piece[1:], device=logits.device)
        total += float(torch.nn.functional.cross_entropy(logits, target, reduction="sum"))
        count += len(piece) - 1
    return math.exp(total / count)
