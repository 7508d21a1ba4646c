"""Horizontally fused prefix-shared ("cascade") attention in Triton: the launch (one kernel + one merge).

Shared segments of a prefix group are attended once for all members, each sequence's own part as
usual, and the partials merged exactly (see shared_prefix_kernels.py for the work decomposition and
shared_prefix_plan.py for the per-batch plan). `cascade=True` runs the same work as three specialised
launches (shared, distinct, merge), for ablation.
"""

from __future__ import annotations

import torch

from batchllm.attention.metadata import AttentionMetadata
from batchllm.attention.triton.graph_plan import get_plan
from batchllm.attention.triton.shared_prefix_kernels import _merge_kernel, _shared_prefix_kernel
from batchllm.attention.triton.shared_prefix_plan import (
    SharedPrefixConfig,
    is_prefill_heavy,
    launch_opts,
    maxnreg_for,
    shared_prefix_config,
)
from batchllm.attention.triton.utils import (
    LOG2E,
    cdiv,
    check_inputs,
    dot_precision,
    is_interpreter,
    kv_scale_args,
    next_pow2,
    upcast_dot,
)
from batchllm.kv_cache.fp8 import is_fp8


def shared_prefix_attention_triton(
    query: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    meta: AttentionMetadata,
    scale: float,
    out: torch.Tensor | None = None,
    *,
    cascade: bool = False,
    shared_splits: int | None = None,
    config: SharedPrefixConfig | None = None,
) -> torch.Tensor:
    """Prefix-shared attention of query [T, Hq, D] over the paged cache (new tokens' KV already
    written; the caches in the query's dtype or float8_e4m3fn with scales); same result as
    `paged_attention_reference`. Returns `out`.

    cascade: shared, distinct and merge as three separate launches (ablation of the fusion).
    shared_splits: pin the split-K factor of the shared tiles (None = heuristic).
    """
    shared = meta.shared
    if shared is None:
        raise ValueError("meta.shared is None: use paged_attention_triton")
    if out is None:
        out = torch.empty_like(query)
    check_inputs(query, k_cache, v_cache, out)
    num_tokens, num_q_heads, head_dim = query.shape
    if meta.num_seqs == 0 or num_tokens == 0:
        return out
    num_kv_heads = k_cache.shape[2]
    group = num_q_heads // num_kv_heads
    cfg = config or shared_prefix_config(
        num_q_heads, num_kv_heads, head_dim, query.dtype, prefill_heavy=is_prefill_heavy(num_tokens, meta.num_seqs),
        kv_fp8=is_fp8(k_cache.dtype),
    )  # fmt: skip
    plan = get_plan(meta, cfg, group, num_kv_heads, query.device, shared_splits)

    num_parts = shared.num_levels * plan.splits + 1
    part_out = torch.empty(num_parts, num_tokens, num_q_heads, head_dim, dtype=torch.float32, device=query.device)
    part_lse = torch.empty(num_parts, num_tokens, num_q_heads, dtype=torch.float32, device=query.device)
    if not plan.fully_covered:
        part_lse[: num_parts - 1].fill_(float("-inf"))

    n_shared = plan.num_seg_tiles * plan.splits * num_kv_heads
    n_decode = plan.num_decodes * num_kv_heads
    n_extend = plan.n_extend_tiles * num_kv_heads
    d_pad = max(16, next_pow2(head_dim))
    k_scale, v_scale, kv_fp8 = kv_scale_args(query, k_cache, v_cache)
    args = (
        query, k_cache, v_cache, k_scale, v_scale, part_out, part_lse,
        meta.query_start_loc, meta.seq_lens, meta.block_tables, shared.distinct_kv_start,
        plan.seg_tile_start, shared.seg_q_start, shared.seg_q_end, shared.seg_kv_start, shared.seg_kv_end,
        shared.seg_level, shared.seg_block_tables,
        query.stride(0), query.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        meta.block_tables.stride(0), shared.seg_block_tables.stride(0),
        part_out.stride(0), part_out.stride(1), part_out.stride(2),
        part_lse.stride(0), part_lse.stride(1), part_lse.stride(2),
        shared.num_segments, plan.splits, n_shared, n_decode, plan.num_decodes, meta.num_seqs,
    )  # fmt: skip
    constexprs = dict(
        G=group, HKV=num_kv_heads, PAGE=k_cache.shape[1], HEAD_DIM=head_dim, D_PAD=d_pad,
        S_BLOCK_M=plan.s_block_m, S_BLOCK_Q=plan.s_block_q, S_BLOCK_N=cfg.shared_block_n,
        D_BLOCK_M=max(16, next_pow2(group)), D_BLOCK_N=cfg.decode_block_n,
        E_BLOCK_M=plan.e_block_m, E_BLOCK_Q=plan.e_block_q, E_BLOCK_N=cfg.extend_block_n, KV_FP8=kv_fp8,
        UPCAST=upcast_dot(query.dtype), PRECISION=dot_precision(query.dtype), INTERPRET=is_interpreter(),
        num_stages=cfg.num_stages,
    )  # fmt: skip
    tail = (num_parts - 1, float(scale) * LOG2E)
    has = dict(HAS_SHARED=n_shared > 0, HAS_DECODE=n_decode > 0, HAS_EXTEND=n_extend > 0)
    if not cascade:
        total = n_shared + n_decode + n_extend
        if total:
            _shared_prefix_kernel[(total,)](
                *args, 0, *tail, **has, **constexprs, **launch_opts(plan.num_warps, plan.maxnreg)
            )  # fmt: skip
    else:
        if n_shared:
            warps = cfg.num_warps or (8 if plan.s_block_m >= 128 else 4)
            _shared_prefix_kernel[(n_shared,)](
                *args, 0, *tail, HAS_SHARED=True, HAS_DECODE=False, HAS_EXTEND=False, **constexprs,
                **launch_opts(warps, maxnreg_for(cfg, warps)),
            )  # fmt: skip
        if n_decode + n_extend:
            warps = cfg.num_warps or (8 if n_extend and plan.e_block_m >= 128 else 4)
            _shared_prefix_kernel[(n_decode + n_extend,)](
                *args, n_shared, *tail, HAS_SHARED=False, HAS_DECODE=n_decode > 0, HAS_EXTEND=n_extend > 0,
                **constexprs, **launch_opts(warps, maxnreg_for(cfg, warps)),
            )  # fmt: skip

    h_block = min(next_pow2(num_q_heads), max(1, 4096 // d_pad))
    _merge_kernel[(num_tokens, cdiv(num_q_heads, h_block))](
        part_out, part_lse, out,
        part_out.stride(0), part_out.stride(1), part_out.stride(2),
        part_lse.stride(0), part_lse.stride(1), part_lse.stride(2),
        out.stride(0), out.stride(1), num_q_heads, num_parts,
        H_BLOCK=h_block, HEAD_DIM=head_dim, D_PAD=d_pad, INTERPRET=is_interpreter(), num_warps=4,
    )  # fmt: skip
    return out
