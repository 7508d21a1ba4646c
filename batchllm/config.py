"""Validated engine configuration: one dataclass per concern, checked at construction."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

import torch

_DTYPES = {
    "float32": torch.float32,
    "float": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "half": torch.float16,
}


def resolve_dtype(dtype: str | torch.dtype, config_dtype: Optional[str], device: torch.device) -> torch.dtype:
    """Map the user's dtype argument to a torch dtype ("auto": the checkpoint's dtype on GPU, float32 on CPU)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        if device.type == "cpu":
            # CPU matmuls in bf16/fp16 are slow and less exact; float32 is the useful default there.
            return torch.float32
        if config_dtype in _DTYPES and _DTYPES[config_dtype] != torch.float32:
            return _DTYPES[config_dtype]
        return torch.bfloat16
    if dtype not in _DTYPES:
        raise ValueError(f"dtype={dtype!r} is not supported; use one of 'auto', {sorted(set(_DTYPES))}")
    return _DTYPES[dtype]


def resolve_max_model_len(max_position_embeddings: int, sliding_window: Optional[int], requested: Optional[int]) -> int:
    """The context length an engine runs with: the model's limit unless a smaller one is asked.

    Within its window, sliding-window attention equals full attention, so the window caps the limit.
    """
    limit = max_position_embeddings if sliding_window is None else min(max_position_embeddings, sliding_window)
    if requested is None:
        return limit
    if requested > limit:
        raise ValueError(
            f"max_model_len={requested} exceeds what the model supports ({limit}: max_position_embeddings"
            f"{' / sliding_window' if sliding_window else ''}); lower it"
        )
    return requested


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise ValueError(f"device={device!r} is not supported; use 'auto', 'cpu' or 'cuda'")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} was asked for but torch sees no CUDA GPU; use device='cpu'")
    return torch.device(device)


# KV cache element types by option value (None: the model dtype).
KV_CACHE_DTYPES: dict[str, Optional[torch.dtype]] = {
    "auto": None,
    "fp8": torch.float8_e4m3fn,
    "fp8_e4m3": torch.float8_e4m3fn,
}


def check_kv_cache_dtype(kv_cache_dtype: str, device: torch.device) -> None:
    """ValueError when `device` cannot run a KV cache of this kind: FP8 on a GPU needs compute capability
    8.9+ (Triton's fp8e4nv: Ada, Hopper and later). On CPU it runs through the reference attention."""
    if KV_CACHE_DTYPES.get(kv_cache_dtype) is not None:
        _require_fp8_gpu(device, f"kv_cache_dtype={kv_cache_dtype!r}", "", "use kv_cache_dtype='auto'")


def _require_fp8_gpu(device: torch.device, option: str, why: str, instead: str) -> None:
    """ValueError naming `option` and what to do `instead` when `device` is a CUDA GPU below compute capability
    8.9 (Ada, Hopper: the first with FP8 tensor cores and Triton's fp8e4nv). A CPU passes: it runs references."""
    if device.type != "cuda":
        return
    major, minor = torch.cuda.get_device_capability(device)
    if (major, minor) < (8, 9):
        raise ValueError(
            f"{option} needs a GPU of compute capability 8.9 or newer (Ada, Hopper{why}); "
            f"{torch.cuda.get_device_name(device)} is {major}.{minor}; {instead}"
        )


# Values of the `quantization` option (None: none, unless the checkpoint is itself FP8).
QUANTIZATIONS = (None, "fp8")


def _check_quantization_name(quantization: Optional[str]) -> None:
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization={quantization!r} is not supported; use one of {list(QUANTIZATIONS)}")


def resolve_quantization(quantization: Optional[str], checkpoint_is_fp8: bool) -> Optional[str]:
    """The quantization an engine runs with: the one asked for; unset, "fp8" for a checkpoint stored in FP8
    (as vLLM reads quantization_config), else None. ValueError for a value not in QUANTIZATIONS."""
    _check_quantization_name(quantization)
    return "fp8" if quantization is None and checkpoint_is_fp8 else quantization


def check_quantization(quantization: Optional[str], device: torch.device) -> None:
    """ValueError when `device` cannot run this quantization: FP8 GEMMs need FP8 tensor cores, compute
    capability 8.9+ (Ada, Hopper and later). On CPU the reference path (dequantize, then matmul) runs."""
    _check_quantization_name(quantization)
    if quantization is not None:
        _require_fp8_gpu(device, f"quantization={quantization!r}", "; FP8 tensor cores",
                         "leave quantization unset with a bf16/fp16 checkpoint")  # fmt: skip


@dataclass(frozen=True)
class CacheConfig:
    """How the paged KV cache is sized.

    block_size: tokens per KV block (a power of two).
    gpu_memory_utilization: fraction of total GPU memory the engine may use (weights + activations + KV).
    cpu_kv_cache_bytes: KV budget on CPU, where there is no free-memory query worth trusting.
    num_kv_blocks: fixed block count, overriding both (tests use it to force preemption).
    gpu_memory_is_share: gpu_memory_utilization is this engine's share of a GPU that other engines share
        (data-parallel replicas with a fraction of a GPU each): the KV budget is the share minus what this
        process holds. Off, the budget also gives up whatever other processes hold when it is measured.
    kv_cache_dtype: "auto" stores KV in the model dtype; "fp8" (= "fp8_e4m3") in float8_e4m3fn with a
        per-layer K and V scale (the checkpoint's k_scale / v_scale, else 1.0): half the bytes, twice the blocks.
    """

    block_size: int = 16
    gpu_memory_utilization: float = 0.90
    cpu_kv_cache_bytes: int = 1 << 30
    num_kv_blocks: Optional[int] = None
    gpu_memory_is_share: bool = False
    kv_cache_dtype: str = "auto"

    def __post_init__(self) -> None:
        if self.block_size <= 0 or self.block_size & (self.block_size - 1):
            raise ValueError(f"block_size={self.block_size} must be a positive power of two (e.g. 16)")
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ValueError(f"gpu_memory_utilization={self.gpu_memory_utilization} must be in (0, 1]")
        if self.cpu_kv_cache_bytes <= 0:
            raise ValueError(f"cpu_kv_cache_bytes={self.cpu_kv_cache_bytes} must be positive")
        if self.num_kv_blocks is not None and self.num_kv_blocks < 1:
            raise ValueError(f"num_kv_blocks={self.num_kv_blocks} must be at least 1")
        if not isinstance(self.kv_cache_dtype, str) or self.kv_cache_dtype not in KV_CACHE_DTYPES:
            raise ValueError(f"kv_cache_dtype={self.kv_cache_dtype!r} is not supported; use one of {list(KV_CACHE_DTYPES)}")


@dataclass(frozen=True)
class SchedulerConfig:
    """Scheduling policy and per-iteration limits; every BatchLLM feature can be switched on its own.

    max_num_batched_tokens: token budget of one iteration (all running decodes + prefill chunks).
    max_num_seqs: cap on running requests; only used by token_batching="count" (None = no cap).
    enable_chunked_prefill: split long prefills across iterations to fit the token budget.
    prefix_clustering: analyse the whole batch into prefix groups; each shared prefix is prefilled once
        and its KV blocks are shared by reference with the group's members.
    multi_level: let a group's prefix extend a parent group's prefix (every level's KV stored once). On by
        default: on the H100 it took the multilevel workload from 8.75 to 8.35 s and leaves one-level
        workloads' schedules unchanged.
    min_shared_len: shortest shared prefix worth a prefix pass (None: one KV block).
    decode_first: order groups and members by expected decode length / prefill length, largest first
        (False: first-come-first-served).
    token_batching: "memory" admits requests while the KV they will need (prompt + expected output,
        shared blocks once) fits memory_threshold of the pool, with no request cap; "count" admits while
        blocks are free now and fewer than max_num_seqs run (vLLM-style).
    memory_threshold: the share of the pool memory-centric admission may promise. Above 1 it over-commits:
        more requests decode side by side (each step's weight read serves more of them) and the engine
        preempts when blocks run out, as the count rule does.
    prefix_caching: automatic prefix caching of full KV blocks with LRU eviction (vLLM-style).
    preemption_mode: "auto" picks swap to host memory or recompute by estimated cost; or force one.
    swap_space_bytes: pinned host memory for swapped-out KV blocks.
    """

    max_num_batched_tokens: int = 8192
    max_num_seqs: Optional[int] = 256
    enable_chunked_prefill: bool = True
    prefix_clustering: bool = True
    multi_level: bool = True
    min_shared_len: Optional[int] = None
    decode_first: bool = True
    token_batching: Literal["memory", "count"] = "memory"
    memory_threshold: float = 1.0
    prefix_caching: bool = False
    preemption_mode: Literal["auto", "recompute", "swap"] = "auto"
    swap_space_bytes: int = 4 << 30

    def __post_init__(self) -> None:
        if self.max_num_batched_tokens < 1:
            raise ValueError(f"max_num_batched_tokens={self.max_num_batched_tokens} must be at least 1")
        if self.max_num_seqs is not None and self.max_num_seqs < 1:
            raise ValueError(f"max_num_seqs={self.max_num_seqs} must be at least 1 (or None for no cap)")
        if self.token_batching not in ("memory", "count"):
            raise ValueError(f"token_batching={self.token_batching!r} is unknown; use 'memory' or 'count'")
        if not 0.0 < self.memory_threshold <= 4.0:
            raise ValueError(f"memory_threshold={self.memory_threshold} must be in (0, 4] (above 1 over-commits)")
        if self.preemption_mode not in ("auto", "recompute", "swap"):
            raise ValueError(f"preemption_mode={self.preemption_mode!r} is unknown; use 'auto', 'recompute' or 'swap'")
        if self.swap_space_bytes < 0:
            raise ValueError(f"swap_space_bytes={self.swap_space_bytes} must be >= 0")
        if self.min_shared_len is not None and self.min_shared_len < 1:
            raise ValueError(f"min_shared_len={self.min_shared_len} must be >= 1 (or None: one KV block)")

    @classmethod
    def preset(cls, name: str, **overrides) -> "SchedulerConfig":
        """'batchllm': every feature on. 'vllm-like': FCFS, LRU prefix cache, count caps (the baseline)."""
        presets = {
            "batchllm": dict(prefix_clustering=True, decode_first=True, token_batching="memory", prefix_caching=False),
            "vllm-like": dict(prefix_clustering=False, decode_first=False, token_batching="count", prefix_caching=True),
        }
        if name not in presets:
            raise ValueError(f"scheduling={name!r} is unknown; use one of {sorted(presets)}")
        unknown = sorted(set(overrides) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown scheduler option(s) {unknown}; known: {sorted(cls.__dataclass_fields__)}")
        return cls(**{**presets[name], **overrides})


@dataclass(frozen=True)
class EngineConfig:
    model: str
    dtype: torch.dtype
    device: torch.device
    max_model_len: int
    load_format: Literal["auto", "dummy"] = "auto"
    seed: int = 0
    enforce_eager: bool = False  # no CUDA graphs for decode iterations
    # Launch iteration i+1 before reading iteration i's tokens, so host work overlaps the GPU (vLLM's async
    # scheduling); off: each iteration's tokens are read before the next is scheduled.
    overlap_scheduling: bool = True
    cache: CacheConfig = field(default_factory=CacheConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    # "fp8": the decoder's linear layers in float8_e4m3fn (W8A8, model/fp8.py); None: the model dtype.
    quantization: Optional[str] = None

    def __post_init__(self) -> None:
        check_quantization(self.quantization, self.device)
        if self.load_format not in ("auto", "dummy"):
            raise ValueError(f"load_format={self.load_format!r} is not supported; use 'auto' or 'dummy'")
        if self.max_model_len < 1:
            raise ValueError(f"max_model_len={self.max_model_len} must be at least 1")
        if not self.scheduler.enable_chunked_prefill and self.scheduler.max_num_batched_tokens < self.max_model_len:
            raise ValueError(
                f"max_num_batched_tokens={self.scheduler.max_num_batched_tokens} is below max_model_len="
                f"{self.max_model_len}; enable chunked prefill or raise max_num_batched_tokens"
            )
        check_kv_cache_dtype(self.cache.kv_cache_dtype, self.device)

    @property
    def kv_dtype(self) -> torch.dtype:
        """The KV cache's element type: the model dtype, or float8_e4m3fn (cache.kv_cache_dtype)."""
        return KV_CACHE_DTYPES[self.cache.kv_cache_dtype] or self.dtype
