"""Decoder-only transformer for the Llama, Mistral, Qwen2 and Qwen3 families (they differ only by flags)."""

from __future__ import annotations

import torch
from torch import nn

from batchllm.attention.backend import AttentionBackend
from batchllm.attention.metadata import AttentionMetadata
from batchllm.model.arch_config import ArchConfig
from batchllm.model.layers import RMSNorm, RotaryEmbedding, SwiGLU


class Attention(nn.Module):
    def __init__(self, cfg: ArchConfig, rope: RotaryEmbedding) -> None:
        super().__init__()
        self.cfg = cfg
        self.qkv_proj = nn.Linear(cfg.hidden_size, cfg.q_size + 2 * cfg.kv_size, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(cfg.q_size, cfg.hidden_size, bias=False)
        if cfg.qk_norm:
            self.q_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps)
            self.k_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps)
        self.rope = rope
        self.scale = cfg.head_dim**-0.5

    def forward(
        self,
        positions: torch.Tensor,
        hidden: "torch.Tensor | Fp8Activations",
        kv_cache: tuple[torch.Tensor, torch.Tensor],
        meta: AttentionMetadata,
        backend: AttentionBackend,
        output_rows: "torch.Tensor | None" = None,
    ) -> torch.Tensor:
        """`output_rows`: project only these rows of the attention output (every row's K and V is written)."""
        cfg = self.cfg
        q, k, v = self.qkv_proj(hidden).split([cfg.q_size, cfg.kv_size, cfg.kv_size], dim=-1)
        q = q.view(-1, cfg.num_heads, cfg.head_dim)
        k = k.view(-1, cfg.num_kv_heads, cfg.head_dim)
        v = v.view(-1, cfg.num_kv_heads, cfg.head_dim)
        if cfg.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = self.rope(positions, q, k)
        out = backend.forward(q, k, v, kv_cache[0], kv_cache[1], meta, self.scale).reshape(-1, cfg.q_size)
        return self.o_proj(out if output_rows is None else out[output_rows])


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ArchConfig, rope: RotaryEmbedding) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg, rope)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = SwiGLU(cfg.hidden_size, cfg.intermediate_size)

    def forward(self, positions, hidden, residual, kv_cache, meta, backend, output_rows=None):
        """(MLP output, residual stream); the caller adds them (fused into the next layer's first norm).
        With `output_rows`, both come back for those rows only (the layer still writes every row's KV)."""
        if residual is None:
            residual = hidden
            hidden = self.input_layernorm(hidden)
        else:
            hidden, residual = self.input_layernorm(hidden, residual)
        hidden = self.self_attn(positions, hidden, kv_cache, meta, backend, output_rows)
        if output_rows is not None:
            residual = residual[output_rows]
        hidden, residual = self.post_attention_layernorm(hidden, residual)
        return self.mlp(hidden), residual


class DecoderForCausalLM(nn.Module):
    """Token ids of a flattened batch in, logits of the selected rows out; KV lives in the paged cache."""

    last_layer_on_sampled_rows = True  # off only for A/B timing (benchmarks/ab_engine.py)

    def __init__(self, cfg: ArchConfig, max_positions: int) -> None:
        super().__init__()
        self.cfg = cfg
        rope = RotaryEmbedding(cfg.head_dim, max_positions, cfg.rope_theta, cfg.rope_scaling)
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg, rope) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.rope = rope  # shared by every layer; registered here so loading can rebuild its tables
        if not cfg.tie_word_embeddings:
            self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)

    def lm_head_weight(self) -> torch.Tensor:
        return self.embed_tokens.weight if self.cfg.tie_word_embeddings else self.lm_head.weight

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        kv_caches: list[tuple[torch.Tensor, torch.Tensor]],
        meta: AttentionMetadata,
        backend: AttentionBackend,
        logits_indices: torch.Tensor,
    ) -> torch.Tensor:
        hidden, residual = self.embed_tokens(input_ids), None
        # Past the last layer's attention only the rows that sample matter: its o_proj and MLP (88 % of a
        # llama-3.1-8b layer's FLOPs) run on those rows alone, a 32nd of a prefill iteration's GEMM work.
        trim = self.last_layer_on_sampled_rows and 0 < logits_indices.numel() < input_ids.numel()
        rows = logits_indices if trim else None
        last = len(self.layers) - 1
        for index, (layer, kv_cache) in enumerate(zip(self.layers, kv_caches)):
            output_rows = rows if index == last else None
            hidden, residual = layer(positions, hidden, residual, kv_cache, meta, backend, output_rows)
        if rows is None:
            hidden, residual = hidden[logits_indices], residual[logits_indices]
        hidden, _ = self.norm(hidden, residual)
        return torch.matmul(hidden, self.lm_head_weight().t()).float()
