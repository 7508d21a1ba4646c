"""Teacher-forced log-likelihood of a token sequence under a loaded decoder (the engine returns no prompt
logprobs): one prefill of the whole sequence through the model module, reference attention, its own KV."""

from __future__ import annotations

import math

import torch

from batchllm.attention.backend import get_attention_backend
from batchllm.attention.metadata import AttentionMetadata
from batchllm.kv_cache.cache_tensors import allocate_kv_cache
from batchllm.model.arch_config import ArchConfig
from batchllm.model.decoder import DecoderForCausalLM


@torch.no_grad()
def sequence_logits(
    model: DecoderForCausalLM, arch: ArchConfig, tokens: list[int], dtype: torch.dtype, block_size: int = 16
) -> torch.Tensor:
    """fp32 logits [len(tokens), vocab]: row i is the next-token distribution after tokens[: i + 1]."""
    device = model.embed_tokens.weight.device
    n = len(tokens)
    blocks = -(-n // block_size)
    meta = AttentionMetadata(
        query_start_loc=torch.tensor([0, n], dtype=torch.int32, device=device),
        seq_lens=torch.tensor([n], dtype=torch.int32, device=device),
        block_tables=torch.arange(blocks, dtype=torch.int32, device=device)[None, :],
        slot_mapping=torch.arange(n, device=device), max_query_len=n, max_seq_len=n,
        query_start_loc_cpu=[0, n], seq_lens_cpu=[n],
    )  # fmt: skip
    caches = allocate_kv_cache(arch, blocks, block_size, dtype, device)
    ids = torch.tensor(tokens, device=device)
    positions = torch.arange(n, device=device)
    return model(ids, positions, caches, meta, get_attention_backend("reference"), positions)


def perplexity(model: DecoderForCausalLM, arch: ArchConfig, tokens: list[int], dtype: torch.dtype) -> float:
    """exp(mean negative log-likelihood of tokens[1:] given what precedes each)."""
    logits = sequence_logits(model, arch, tokens, dtype)[:-1]
    target = torch.tensor(tokens[1:], device=logits.device)
    nll = torch.nn.functional.cross_entropy(logits, target)
    return math.exp(float(nll))
