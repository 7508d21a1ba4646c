"""Owns the model, its paged KV cache and the sampler; runs one scheduled iteration."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Optional

import torch

from batchllm.attention.backend import check_kv_cache_support, get_attention_backend
from batchllm.attention.metadata import fresh_prefill_metadata
from batchllm.config import EngineConfig
from batchllm.core.plan import SchedulerOutput
from batchllm.core.preemption import PreemptionCosts
from batchllm.kv_cache.block_table import kv_blocks_needed
from batchllm.kv_cache.cache_tensors import (
    allocate_host_kv_cache,
    allocate_kv_cache,
    gpu_kv_budget_bytes,
    kv_bytes_per_block,
    num_blocks_for_budget,
)
from batchllm.kv_cache.fp8 import storage_view
from batchllm.model.arch_config import ArchConfig
from batchllm.model.loader import load_model
from batchllm.runner.cuda_graphs import MAX_SHARED_LEVELS, DecodeGraphs
from batchllm.runner.input_batch import prepare_inputs
from batchllm.runner.sampled_tokens import SampledTokens
from batchllm.runner.sampler import Sampler
from batchllm.runner.shared_segments import order_for_sharing
from batchllm.structured.bitmasks import StepBitmask

logger = logging.getLogger(__name__)


class ModelRunner:
    def __init__(self, config: EngineConfig, arch: ArchConfig, eos_token_ids: list[int], attention_backend: str) -> None:
        self.config = config
        self.arch = arch
        self.device = config.device
        self.block_size = config.cache.block_size
        self.model = load_model(
            config.model, arch, config.max_model_len, config.dtype, config.device, config.load_format, config.seed,
            quantization=config.quantization,
        )  # fmt: skip
        self.backend = get_attention_backend(attention_backend)
        check_kv_cache_support(self.backend, config.kv_dtype, config.cache.kv_cache_dtype)
        self.sampler = Sampler(eos_token_ids, config.seed, config.device)
        self.num_blocks = self._decide_num_blocks()
        use_graphs = self.device.type == "cuda" and not config.enforce_eager and self.backend.supports_cuda_graphs
        # One extra block, never handed to requests, takes the writes of CUDA-graph padding rows.
        # An FP8 cache takes the checkpoint's KV scales (kv_cache/fp8.py), which the loader collects.
        self.kv_caches = allocate_kv_cache(
            arch, self.num_blocks + int(use_graphs), self.block_size, config.kv_dtype, self.device,
            getattr(self.model, "kv_cache_scales", None),
        )  # fmt: skip
        block_bytes = kv_bytes_per_block(arch, self.block_size, config.kv_dtype)
        self.num_host_blocks = config.scheduler.swap_space_bytes // block_bytes
        self.host_kv_caches = (
            allocate_host_kv_cache(arch, self.num_host_blocks, self.block_size, config.kv_dtype, self.device)
            if self.num_host_blocks
            else []
        )
        self._precompile_kernels()
        self.decode_graphs: Optional[DecodeGraphs] = self._capture_decode_graphs() if use_graphs else None

    def _capture_decode_graphs(self) -> DecodeGraphs:
        config = self.config
        max_batch = config.scheduler.max_num_seqs if config.scheduler.token_batching == "count" else 1024
        return DecodeGraphs(
            self.model, self.kv_caches, self.backend, self.block_size,
            kv_blocks_needed(config.max_model_len, self.block_size), self.num_blocks, config.max_model_len,
            min(max_batch or 1024, config.scheduler.max_num_batched_tokens, 1024), self.device,
        )  # fmt: skip

    def recapture_decode_graphs(self) -> None:
        """Compile and capture again after a kernel setting changed (graphs replay the kernels they were
        captured with): for A/B runs of such settings in one process."""
        self._precompile_kernels()
        if self.decode_graphs is not None:
            levels = max((shape.num_levels for _, shape in self.decode_graphs.graphs if shape is not None), default=1)
            self.decode_graphs = None  # free the old graphs' pool before capturing the new ones
            torch.cuda.empty_cache()
            self.decode_graphs = self._capture_decode_graphs()
            self.decode_graphs.capture_shared_graphs(levels)

    def _precompile_kernels(self) -> None:
        if self.device.type == "cuda":
            arch = self.arch
            self.backend.precompile(
                arch.num_heads, arch.num_kv_heads, arch.head_dim, self.config.dtype, self.device,
                self.block_size, kv_dtype=self.config.kv_dtype,
            )  # fmt: skip

    def set_attention_backend(self, name: str) -> None:
        backend = get_attention_backend(name)
        check_kv_cache_support(backend, self.config.kv_dtype, self.config.cache.kv_cache_dtype)
        self.backend = backend
        self._precompile_kernels()
        if self.decode_graphs is not None and self.backend.supports_cuda_graphs:
            # Plain decode graphs replay the paged kernel every Triton variant uses; shared-segment
            # graphs only replay for batches with meta.shared, which only a sharing backend gets.
            self.decode_graphs.backend = self.backend
            self.decode_graphs.capture_shared_graphs()
        elif self.decode_graphs is not None:
            self.decode_graphs = None

    def prepare_multi_level_graphs(self) -> None:
        """Capture the decode graphs of nested groups (as deep as graphs go) before a timed batch needs them."""
        if self.decode_graphs is not None:
            self.decode_graphs.capture_shared_graphs(MAX_SHARED_LEVELS)

    def preemption_costs(self) -> PreemptionCosts:
        on_gpu = self.device.type == "cuda"
        return PreemptionCosts(
            flops_per_token=2.0 * self.arch.num_params(),
            compute_flops_per_s=4e14 if on_gpu else 1e11,
            block_bytes=kv_bytes_per_block(self.arch, self.block_size, self.config.kv_dtype),
            host_bytes_per_s=2.5e10 if on_gpu else 1e10,
        )

    def _copy_blocks(self, pairs: list[tuple[int, int]], to_host: bool) -> None:
        if not pairs:
            return
        src = torch.tensor([p[0] for p in pairs])
        dst = torch.tensor([p[1] for p in pairs])
        for caches in zip(self.kv_caches, self.host_kv_caches):
            # Raw bytes for an FP8 cache (index kernels do not all cover the float8 types).
            (k, v), (host_k, host_v) = ((storage_view(a), storage_view(b)) for a, b in caches)
            if to_host:
                host_k[dst] = k[src.to(self.device)].to("cpu", non_blocking=False)
                host_v[dst] = v[src.to(self.device)].to("cpu", non_blocking=False)
            else:
                k[dst.to(self.device)] = host_k[src].to(self.device, non_blocking=True)
                v[dst.to(self.device)] = host_v[src].to(self.device, non_blocking=True)

    def _decide_num_blocks(self) -> int:
        cache = self.config.cache
        if cache.num_kv_blocks is not None:
            num_blocks = cache.num_kv_blocks
        elif self.device.type == "cuda":
            self._profile_peak_activation()
            budget = gpu_kv_budget_bytes(self.device, cache.gpu_memory_utilization, cache.gpu_memory_is_share)
            num_blocks = num_blocks_for_budget(budget, self.arch, cache, self.config.kv_dtype)
        else:
            num_blocks = num_blocks_for_budget(cache.cpu_kv_cache_bytes, self.arch, cache, self.config.kv_dtype)
        needed = kv_blocks_needed(self.config.max_model_len, self.block_size)
        if num_blocks < needed:
            per_block = kv_bytes_per_block(self.arch, self.block_size, self.config.kv_dtype)
            raise ValueError(
                f"the KV cache fits {num_blocks} blocks ({num_blocks * self.block_size} tokens), fewer than one "
                f"request of max_model_len={self.config.max_model_len} needs ({needed} blocks of {per_block} bytes); "
                "lower max_model_len or give the cache more memory (gpu_memory_utilization / cpu_kv_cache_bytes)"
            )
        logger.info("KV cache: %d blocks of %d tokens", num_blocks, self.block_size)
        return num_blocks

    @torch.inference_mode()
    def _profile_peak_activation(self) -> None:
        """Run the largest iteration the scheduler can produce once, so max_memory_allocated sees its peak."""
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(self.device)
        tokens = self.config.scheduler.max_num_batched_tokens
        seq_len = min(tokens, self.config.max_model_len)
        q_lens = [seq_len] * (tokens // seq_len) + ([tokens % seq_len] if tokens % seq_len else [])
        meta, positions, num_blocks = fresh_prefill_metadata(q_lens, self.block_size, self.device)
        caches = allocate_kv_cache(self.arch, num_blocks, self.block_size, self.config.kv_dtype, self.device)
        input_ids = torch.zeros(tokens, dtype=torch.long, device=self.device)
        logits_index = meta.query_start_loc[1:].long() - 1
        self.model(input_ids, positions, caches, meta, self.backend, logits_index)
        torch.cuda.synchronize(self.device)
        del caches

    def swap_blocks(self, plan: SchedulerOutput) -> None:
        """The plan's KV copies to and from host memory (before its forward pass, if it has one)."""
        self._copy_blocks(plan.swap_out, to_host=True)
        self._copy_blocks(plan.swap_in, to_host=False)

    @torch.inference_mode()
    def forward(self, plan: SchedulerOutput, in_flight: Optional[SampledTokens] = None) -> "LaunchedForward":
        """Swap blocks and queue the forward pass; ``sample`` then queues the sampler and the copy of the
        tokens back. Two calls, so that the engine can fill the token bitmasks that need the previous
        iteration's tokens while the GPU computes this forward.

        `in_flight`: the previous iteration's tokens, which inputs still marked PENDING_TOKEN come from.
        """
        self.swap_blocks(plan)
        shared = self.backend.supports_shared_prefix
        chunks = order_for_sharing(plan.chunks) if shared else plan.chunks
        pending = in_flight.on_device if in_flight is not None else None
        inputs = prepare_inputs(chunks, self.block_size, self.device, shared_prefix=shared, pending_tokens=pending)
        logits = self.decode_graphs.run(inputs) if self.decode_graphs is not None else None
        if logits is None:
            logits = self.model(
                inputs.input_ids, inputs.positions, self.kv_caches, inputs.meta, self.backend, inputs.logits_indices
            )
        return LaunchedForward(inputs.sampled_chunks, logits)

    @torch.inference_mode()
    def sample(self, forward: "LaunchedForward", bitmask: Optional[StepBitmask] = None) -> SampledTokens:
        """Queue the sampler on the forward's logits (masked rows first), start copying the tokens back."""
        tokens, logprobs = self.sampler.sample(forward.logits, [c.request for c in forward.chunks], bitmask)
        sampled = SampledTokens.start_copy(forward.chunks, tokens, logprobs)
        sampled.token_positions = forward.token_positions
        return sampled


@dataclass
class LaunchedForward:
    """A queued forward pass: the chunks that sample (row order) and their logits, not yet sampled."""

    chunks: list
    logits: torch.Tensor
    token_positions: list[int] = field(default_factory=list)  # where each row's token goes (the scheduler)
