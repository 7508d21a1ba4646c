"""The estimated memory use of a batch job, computed without loading the model (``run-batch --dry-run``)."""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch

from batchllm.batch.store import CompactRequests
from batchllm.config import KV_CACHE_DTYPES, CacheConfig
from batchllm.model.arch_config import ArchConfig

DEFAULT_BATCHED_TOKENS = 8192  # LLM's default token budget of one iteration with chunked prefill


def memory_plan(arch: ArchConfig, dtype: torch.dtype, device: torch.device, cache: CacheConfig, max_model_len: int,
                max_num_batched_tokens: Optional[int], max_num_seqs: Optional[int],
                requests: CompactRequests, quantization: Optional[str] = None) -> dict[str, Any]:
    """Weights, activations, KV pool and concurrency of the job (the engine profiles activations at load)."""
    dtype_bytes = torch.finfo(dtype).bits // 8
    weights = arch.weight_bytes(dtype_bytes, fp8_linears=quantization == "fp8")  # fp8: decoder linears 1 byte
    kv_per_token = arch.kv_bytes_per_token((KV_CACHE_DTYPES[cache.kv_cache_dtype] or dtype).itemsize)
    batched = max_num_batched_tokens or DEFAULT_BATCHED_TOKENS
    # Activations of the largest iteration: hidden states, q/k/v, MLP intermediates; logits of sampled rows.
    activations = batched * (6 * arch.hidden_size + arch.q_size + 2 * arch.kv_size + 3 * arch.intermediate_size) \
        * dtype_bytes + min(max_num_seqs or batched, batched) * arch.vocab_size * 4
    plan: dict[str, Any] = {"device": str(device), "dtype": str(dtype).replace("torch.", ""),
                            "params": arch.num_params(), "weights_bytes": weights, "kv_bytes_per_token": kv_per_token,
                            "activation_bytes_estimate": activations, "max_model_len": max_model_len,
                            "block_size": cache.block_size, "kv_cache_dtype": cache.kv_cache_dtype,
                            "quantization": quantization}
    if device.type == "cuda":
        _, total = torch.cuda.mem_get_info(device)
        budget = int(total * cache.gpu_memory_utilization) - weights - activations
        plan["device_memory_bytes"] = total
        plan["kv_pool_source"] = f"{cache.gpu_memory_utilization:.2f} x {total / 2**30:.1f} GiB - weights - activations"
    else:
        budget = cache.cpu_kv_cache_bytes
        plan["kv_pool_source"] = "cpu_kv_cache_bytes (CPU default)"
    per_block = kv_per_token * cache.block_size
    plan["kv_pool_bytes"] = max(budget, 0)
    plan["kv_pool_blocks"] = max(budget, 0) // per_block
    lengths = np.diff(requests.offsets)
    out = np.frombuffer(requests.output_budget, dtype=np.int64) if len(requests) else np.zeros(0, np.int64)
    need_per_request = lengths + out
    plan["requests"] = len(requests)
    plan["prompt_tokens"] = int(lengths.sum())
    plan["max_output_tokens"] = int(out.sum())
    mean_need = float(need_per_request.mean()) if len(requests) else 0.0
    pool_tokens = plan["kv_pool_blocks"] * cache.block_size
    plan["concurrent_requests_estimate"] = int(pool_tokens // mean_need) if mean_need else None
    plan["max_num_seqs"] = max_num_seqs
    plan["fits_one_request"] = plan["kv_pool_blocks"] >= -(-max_model_len // cache.block_size)
    return plan


def format_memory_plan(p: dict) -> str:
    gib = 2**30
    conc = p["concurrent_requests_estimate"]
    conc_text = "-" if conc is None else f"~{conc:,} requests at their full length"
    if conc is not None and p["max_num_seqs"]:
        conc_text += f" (capped at --max-num-seqs {p['max_num_seqs']})" if conc > p["max_num_seqs"] else ""
    lines = [
        "memory plan (estimate; no model loaded)",
        f"  device / dtype        {p['device']} / {p['dtype']}",
        f"  weights               {p['params'] / 1e6:,.1f} M parameters = {p['weights_bytes'] / gib:.2f} GiB"
        + (" (decoder linears in FP8)" if p.get("quantization") == "fp8" else ""),
        f"  activations           ~{p['activation_bytes_estimate'] / gib:.2f} GiB (largest iteration; profiled at load on GPU)",
        f"  KV cache per token    {p['kv_bytes_per_token'] / 1024:.1f} KiB",
        f"  KV pool               {p['kv_pool_bytes'] / gib:.2f} GiB = {p['kv_pool_blocks']:,} blocks of {p['block_size']} "
        f"tokens ({p['kv_pool_source']})",
        f"  batch                 {p['requests']:,} requests: {p['prompt_tokens']:,} prompt tokens + up to "
        f"{p['max_output_tokens']:,} output tokens",
        f"  concurrency           {conc_text}",
    ]
    if not p["fits_one_request"]:
        lines.append(f"  warning: the KV pool cannot hold one request of max_model_len={p['max_model_len']}; "
                     "lower --max-model-len or give the cache more memory")
    return "\n".join(lines)
