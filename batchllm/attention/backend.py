"""Attention backend interface: the model calls one object, the runner picks the implementation by name.

A backend declares what it can do (`supports_shared_prefix`, `supports_cuda_graphs`, `supports_fp8_kv`)
and the runner asks those abilities instead of guessing from names or attributes. A backend that supports CUDA graphs
also hands the graph runner a `GraphPlanner`: what a graph of pure-decode batches with shared segments
fixes (its shape), what to pin before capture and what to refill before each replay.
"""

from __future__ import annotations

from typing import Callable, Optional, Protocol

import torch

from batchllm.attention.kv_store import write_kv_cache
from batchllm.attention.metadata import AttentionMetadata, SharedPrefixMetadata
from batchllm.attention.reference import paged_attention_reference
from batchllm.kv_cache.fp8 import is_fp8


class GraphShape(Protocol):
    """What a CUDA graph of decode rows with shared segments fixes besides its batch size (hashable)."""

    num_levels: int


class GraphPlanner(Protocol):
    """The backend's side of CUDA graphs of pure-decode batches with shared segments (`meta.shared`).

    The graph runner owns the static input buffers and the segment tables; the planner owns what the
    backend's kernels replay besides them."""

    def graph_shape(self, batch_size: int, num_levels: int) -> GraphShape:
        """The launch shape of a graph of `batch_size` rows with `num_levels` levels of segments."""
        ...

    def prepare_for_capture(self, meta: AttentionMetadata, shape: GraphShape) -> None:
        """Fix the launch plan of the graph's static metadata `meta` (every segment slot of the bucket)."""
        ...

    def prepare_for_replay(self, shared: SharedPrefixMetadata, shape: GraphShape, num_slots: int) -> None:
        """Refill what the pinned plan reads from the real batch's segments, before a replay."""
        ...


class AttentionBackend(Protocol):
    name: str
    # The runner lays batches out for sharing (and builds meta.shared) only when this is True.
    supports_shared_prefix: bool
    # Pure-decode forward passes may be captured as CUDA graphs and replayed.
    supports_cuda_graphs: bool
    # Reads (and writes) a float8_e4m3fn KV cache with its per-head scales (kv_cache/fp8.py).
    supports_fp8_kv: bool

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        meta: AttentionMetadata,
        scale: float,
    ) -> torch.Tensor:
        """Write this iteration's key/value ([T, Hkv, D]) to the cache, then attend query [T, Hq, D]."""
        ...

    def precompile(
        self, num_q_heads: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype, device: torch.device,
        block_size: int, kv_dtype: Optional[torch.dtype] = None,
    ) -> None:  # fmt: skip
        """Compile (JIT) every kernel variant a run can need, at engine start rather than mid-run
        (`kv_dtype`: the cache's element type when it is not the query's `dtype`, e.g. FP8)."""
        ...

    def init_capture_graph(
        self, max_batch: int, max_levels: int, num_q_heads: int, num_kv_heads: int, head_dim: int,
        dtype: torch.dtype, device: torch.device, kv_dtype: Optional[torch.dtype] = None,
    ) -> GraphPlanner:  # fmt: skip
        """The planner of shared-segment decode graphs up to `max_batch` rows and `max_levels` levels
        (only asked of a backend with supports_cuda_graphs); `kv_dtype`: the cache's element type when it
        is not the query's `dtype`, e.g. FP8."""
        ...


class ReferenceBackend:
    """Per-sequence PyTorch attention on gathered paged KV: slow, simple, the oracle."""

    name = "reference"
    supports_shared_prefix = False  # ignores meta.shared (benchmarks may set it to lay batches out anyway)
    supports_cuda_graphs = False
    supports_fp8_kv = True  # dequantizes the gathered KV, then attends in fp32

    def forward(self, query, key, value, k_cache, v_cache, meta, scale):
        write_kv_cache(key, value, k_cache, v_cache, meta.slot_mapping)
        return paged_attention_reference(query, k_cache, v_cache, meta, scale)

    def precompile(self, num_q_heads, num_kv_heads, head_dim, dtype, device, block_size, kv_dtype=None) -> None:
        pass  # plain PyTorch: nothing to compile

    def init_capture_graph(self, *args, **kwargs) -> GraphPlanner:
        raise NotImplementedError("the reference backend runs eagerly (no CUDA graphs)")


def _triton(**options) -> Callable[[], AttentionBackend]:
    def make() -> AttentionBackend:
        from batchllm.attention.triton.backend import TritonBackend  # imports Triton: only when asked for

        return TritonBackend(**options)

    return make


_REGISTRY: dict[str, Callable[[], AttentionBackend]] = {
    "reference": ReferenceBackend,
    "triton": _triton(),
    "triton-unfused": _triton(use_shared_prefix_kernel=False),  # ablation: no prefix-shared kernel
}


def register_attention_backend(name: str, factory: Callable[[], AttentionBackend]) -> None:
    """Make `factory` the backend called `name` (a later registration of the same name replaces it)."""
    _REGISTRY[name] = factory


def attention_backend_names() -> list[str]:
    return list(_REGISTRY)


def check_kv_cache_support(backend: AttentionBackend, kv_dtype: torch.dtype, kv_cache_dtype: str) -> None:
    """ValueError when `backend` cannot use a cache of `kv_dtype` (the engine's `kv_cache_dtype` option)."""
    if is_fp8(kv_dtype) and not getattr(backend, "supports_fp8_kv", False):
        raise ValueError(
            f"attention backend {backend.name!r} cannot read an FP8 KV cache (kv_cache_dtype={kv_cache_dtype!r}); "
            "use kv_cache_dtype='auto', or a backend with supports_fp8_kv ('reference', 'triton', 'triton-unfused')"
        )


def get_attention_backend(name: str) -> AttentionBackend:
    factory = _REGISTRY.get(name) if isinstance(name, str) else None
    if factory is None:
        names = [repr(n) for n in _REGISTRY]
        known = " or ".join([", ".join(names[:-1]), names[-1]]) if len(names) > 1 else names[0]
        raise ValueError(f"attention backend {name!r} is unknown; use {known}")
    return factory()
