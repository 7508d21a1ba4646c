"""The physical floor of a workload: FLOPs it must do after prefix reuse, bytes it must move, and the
measured matrix rate / copy bandwidth of this device."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from batchllm.bench.workloads import Workload
from batchllm.model.arch_config import ArchConfig
from batchllm.prefix import analyze_prefixes


@dataclass(frozen=True)
class DeviceRates:
    matmul_flops_per_s: float
    copy_bytes_per_s: float  # bytes read + written per second by a large device copy
    # FP8 tensor-core rate (row-wise scaled torch._scaled_mm, as the FP8 linear layers run); nan if not measured
    fp8_matmul_flops_per_s: float = float("nan")


def _matmul_rate(matmul: Callable[[], torch.Tensor], n: int, reps: int = 10) -> float:
    for _ in range(3):
        matmul()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(reps):
        matmul()
    torch.cuda.synchronize()
    return 2 * n**3 * reps / (time.perf_counter() - start)


def fp8_matmul_rate(device: torch.device, n: int = 8192) -> float:
    """FLOP/s of an n x n x n FP8 GEMM with per-row / per-column scales and bf16 output (nan where the GPU
    has no FP8 tensor cores)."""
    from batchllm.model.fp8 import fp8_matmul_scaled_mm, quantize_rows, scaled_mm_supported

    if not scaled_mm_supported(device):
        return float("nan")
    a, sa = quantize_rows(torch.randn(n, n, device=device))
    b, sb = quantize_rows(torch.randn(n, n, device=device))
    rate = _matmul_rate(lambda: fp8_matmul_scaled_mm(a, sa[:, None], b, sb, torch.bfloat16), n)
    del a, b
    return rate


def measure_device_rates(device: torch.device, dtype: torch.dtype = torch.bfloat16, fp8: bool = False) -> DeviceRates:
    """The bf16 matmul rate and copy bandwidth; with fp8, the FP8 matmul rate too."""
    if device.type != "cuda":
        return DeviceRates(float("nan"), float("nan"))
    n = 8192
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    flops = _matmul_rate(lambda: a @ b, n)
    reps = 10
    src = torch.empty(1 << 30, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(reps):
        dst.copy_(src)
    torch.cuda.synchronize()
    bandwidth = 2 * src.numel() * reps / (time.perf_counter() - start)
    del a, b, src, dst
    fp8_flops = fp8_matmul_rate(device) if fp8 else float("nan")
    torch.cuda.empty_cache()
    return DeviceRates(flops, bandwidth, fp8_flops)


@dataclass(frozen=True)
class Floor:
    flops: float
    bytes: float
    compute_s: float
    memory_s: float

    @property
    def seconds(self) -> float:
        """Neither bound can be beaten; a perfect engine overlaps them, so the larger one is the floor."""
        return max(self.compute_s, self.memory_s)


def workload_floor(
    workload: Workload, arch: ArchConfig, rates: DeviceRates, block_size: int, dtype_bytes: int = 2,
    fp8_linears: bool = False,
) -> Floor:  # fmt: skip
    """FLOPs: 2 x params x (prefill tokens left after ideal prefix reuse + output tokens) + attention.
    Bytes: the weights once per decode step of the longest request, plus the KV every decode token reads
    (a shared prefix read once per step for its whole group). fp8_linears: the decoder linears' FLOPs run
    at the FP8 matmul rate (the lm_head and attention at the bf16 one) and their weights take one byte each."""
    analysis = analyze_prefixes(workload.prompts, block_size=block_size)
    params = arch.num_params() - arch.vocab_size * arch.hidden_size  # the embedding lookup costs no FLOPs
    prefill = analysis.stats.prefill_tokens
    decode = workload.output_tokens
    attn_per_pair = 4 * arch.num_layers * arch.num_heads * arch.head_dim  # QK^T and PV, per (query, key) pair
    attention_pairs = 0
    kv_bytes = 0.0
    kv_per_token = arch.kv_bytes_per_token(dtype_bytes)
    shared_len = {}
    for group in analysis.groups:
        for member in group.member_ids.tolist():
            shared_len[member] = group.shared_prefix_len
    for group in analysis.sharing_groups:  # the prefix: computed once, read once per decode step of the group
        members = group.member_ids.tolist()
        attention_pairs += group.shared_prefix_len * (group.shared_prefix_len + 1) // 2
        steps = max(workload.max_tokens[m] for m in members)
        kv_bytes += group.shared_prefix_len * kv_per_token * steps
    for i, (prompt, out) in enumerate(zip(workload.prompts, workload.max_tokens)):
        start = shared_len.get(i, 0)
        n = len(prompt)
        attention_pairs += (n * (n + 1) // 2 - start * (start + 1) // 2)  # the suffix attends everything before
        attention_pairs += out * n + out * (out - 1) // 2  # each output token attends the whole context
        kv_bytes += (out * (n - start) + out * (out - 1) // 2) * kv_per_token
    flops = 2.0 * params * (prefill + decode) + attn_per_pair * attention_pairs
    compute_s = flops / rates.matmul_flops_per_s
    if fp8_linears:
        linear_flops = 2.0 * arch.linear_params() * (prefill + decode)
        compute_s = linear_flops / rates.fp8_matmul_flops_per_s + (flops - linear_flops) / rates.matmul_flops_per_s
    weight_bytes = arch.weight_bytes(dtype_bytes, fp8_linears)
    total_bytes = weight_bytes * max(workload.max_tokens) + kv_bytes
    return Floor(flops, total_bytes, compute_s, total_bytes / rates.copy_bytes_per_s)


def iteration_floor_seconds(
    batch_tokens: np.ndarray, kv_blocks_used: np.ndarray, arch: ArchConfig, rates: DeviceRates, block_size: int,
    kv_bytes: int = 2, fp8_linears: bool = False,
) -> np.ndarray:  # fmt: skip
    """Per iteration of an engine trace, the least time it could take: the larger of its linear layers'
    FLOPs (2 x linear params x its tokens, at the FP8 rate for FP8 linears) and the bytes it must read once
    (the weights, plus every KV block in use: a shared prefix's blocks are in use once for its group).
    Attention FLOPs and the lm_head are left out, so this floor is a lower bound on the lower bound."""
    rate = rates.fp8_matmul_flops_per_s if fp8_linears else rates.matmul_flops_per_s
    compute = 2.0 * arch.linear_params() * np.asarray(batch_tokens, dtype=np.float64) / rate
    block_bytes = arch.kv_bytes_per_token(kv_bytes) * block_size
    memory = (arch.weight_bytes(2, fp8_linears) + np.asarray(kv_blocks_used, dtype=np.float64) * block_bytes)
    return np.maximum(compute, memory / rates.copy_bytes_per_s)
