"""The decoder's forward pass: only the rows that sample go through the last layer's o_proj and MLP."""

from __future__ import annotations

import pytest
import torch

from batchllm.attention.backend import get_attention_backend
from batchllm.attention.metadata import fresh_prefill_metadata
from batchllm.kv_cache.cache_tensors import allocate_kv_cache
from batchllm.model.arch_config import load_arch_config
from batchllm.model.loader import load_model

DEVICE = torch.device("cpu")
TOKENS = [5, 17, 300, 42, 7, 99, 1, 250, 64, 3, 11]
Q_LENS = [6, 3, 2]


def run(model, arch, rows: list[int]) -> tuple[torch.Tensor, list[int], list]:
    """(logits of `rows`, the row count each layer's MLP saw, the KV caches written)."""
    meta, positions, num_blocks = fresh_prefill_metadata(Q_LENS, 16, DEVICE)
    caches = allocate_kv_cache(arch, num_blocks, 16, torch.float32, DEVICE)
    seen: list[int] = []
    hooks = [layer.mlp.register_forward_pre_hook(lambda _m, args: seen.append(args[0].shape[0])) for layer in model.layers]
    try:
        with torch.no_grad():
            logits = model(torch.tensor(TOKENS), positions, caches, meta, get_attention_backend("reference"),
                           torch.tensor(rows, dtype=torch.long))
    finally:
        for hook in hooks:
            hook.remove()
    return logits, seen, caches


@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_last_layer_runs_only_the_sampled_rows_and_gives_the_full_passs_logits(tiny_models, family):
    path = tiny_models[family]
    arch = load_arch_config(path)
    model = load_model(path, arch, 128, torch.float32, DEVICE)
    everything = list(range(len(TOKENS)))
    full, full_seen, full_caches = run(model, arch, everything)
    sampled = [5, 8, 10]  # each sequence's last token
    trimmed, seen, caches = run(model, arch, sampled)

    assert full_seen == [len(TOKENS)] * arch.num_layers
    assert seen == [len(TOKENS)] * (arch.num_layers - 1) + [len(sampled)]
    torch.testing.assert_close(trimmed, full[sampled], rtol=1e-5, atol=1e-5)
    # every layer, the last one included, still wrote every token's K and V
    for (k, v), (k_full, v_full) in zip(caches, full_caches):
        assert torch.equal(k, k_full) and torch.equal(v, v_full)


def test_no_sampled_row_skips_nothing_and_returns_no_logits(tiny_models):
    path = tiny_models["llama"]
    arch = load_arch_config(path)
    model = load_model(path, arch, 128, torch.float32, DEVICE)
    logits, seen, _ = run(model, arch, [])
    assert logits.shape == (0, arch.vocab_size)
    assert seen == [len(TOKENS)] * arch.num_layers
