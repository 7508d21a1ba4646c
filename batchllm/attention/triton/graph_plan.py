"""Launch plans of the fused prefix-shared kernel, cached per batch, and the plans CUDA graphs pin.

A batch's plan is computed from host copies once and kept in `SharedPrefixMetadata.launch_plans` under
an explicit `PlanKey`, so the 30-odd layers of a forward pass reuse it (build a new metadata object per
batch). A CUDA graph of pure-decode batches instead pins a plan whose grid is sized for the most tiles
a batch of its bucket can have; `DecodeGraphPlanner` is what the graph runner asks for that plan and for
the per-replay refill of the segment tile starts the pinned plan reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from batchllm.attention.metadata import AttentionMetadata, SharedPrefixMetadata, max_decode_segments
from batchllm.attention.triton.shared_prefix_plan import (
    LaunchPlan,
    SharedPrefixConfig,
    make_plan,
    maxnreg_for,
    shared_prefix_config,
)
from batchllm.attention.triton.utils import cdiv, next_pow2, num_sms
from batchllm.host_to_device import to_device


@dataclass(frozen=True)
class PlanKey:
    """What a cached launch plan depends on besides the batch itself."""

    config: SharedPrefixConfig
    group: int
    num_kv_heads: int
    device: str
    splits: Optional[int]  # pinned split-K factor of the shared tiles; None = heuristic


def get_plan(
    meta: AttentionMetadata, cfg: SharedPrefixConfig, group: int, num_kv_heads: int, device: torch.device,
    splits: Optional[int],
) -> LaunchPlan:  # fmt: skip
    """The batch's plan for this launch, made on first use and kept on `meta.shared` (one per batch,
    reused by every layer; a CUDA-graph batch finds the plan `pin_decode_graph_plan` put there)."""
    plans = meta.shared.launch_plans
    key = PlanKey(cfg, group, num_kv_heads, str(device), splits)
    if key not in plans:
        plans[key] = make_plan(meta, cfg, group, num_kv_heads, device, splits)
    return plans[key]


@dataclass(frozen=True)
class DecodeGraphShape:
    """What a CUDA graph of a pure-decode batch with shared segments fixes, besides its batch size."""

    num_levels: int
    s_block_m: int
    splits: int


def decode_graph_shape(
    batch_size: int, num_levels: int, num_q_heads: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype,
    device: torch.device, kv_fp8: bool = False,
) -> DecodeGraphShape:  # fmt: skip
    """Launch shape of a CUDA graph of `batch_size` decode rows with `num_levels` levels of segments.

    Fixed per batch size, so one graph per (bucket, levels) serves every grouping (no capture in the
    middle of a run): the large tile height, and split-K only where the shared programs of a full
    bucket grouped into whole tiles would leave SMs idle."""
    cfg = shared_prefix_config(num_q_heads, num_kv_heads, head_dim, dtype, kv_fp8=kv_fp8)
    group = num_q_heads // num_kv_heads
    s_block_m = max(16, next_pow2(group), cfg.shared_block_m)
    programs = cdiv(batch_size, s_block_m // group) * num_kv_heads
    splits = 1
    while splits < 16 and programs * splits * 2 <= num_sms(device):
        splits *= 2
    return DecodeGraphShape(num_levels, s_block_m, splits)


def decode_graph_tile_starts(
    shared: SharedPrefixMetadata, shape: DecodeGraphShape, group: int, num_slots: int, device: torch.device
) -> torch.Tensor:
    """First shared tile of each segment for a graph of `shape` with `num_slots` segment slots, then the
    real total repeated up to index num_slots (which the kernel reads as the tile count): [num_slots + 1]."""
    q_tokens = np.asarray(shared.seg_q_end_cpu, dtype=np.int64) - np.asarray(shared.seg_q_start_cpu, dtype=np.int64)
    starts = np.zeros(num_slots + 1, dtype=np.int32)
    np.cumsum(-(-q_tokens // (shape.s_block_m // group)), out=starts[1 : len(q_tokens) + 1])
    starts[len(q_tokens) + 1 :] = starts[len(q_tokens)]
    return to_device(starts, torch.int32, device)


def decode_graph_max_segments(batch_size: int, num_levels: int) -> int:
    """Segment slots a CUDA graph of `batch_size` decode rows and `num_levels` levels reserves."""
    return max_decode_segments(batch_size, num_levels)


def pin_decode_graph_plan(
    meta: AttentionMetadata, shape: DecodeGraphShape, seg_tile_start: torch.Tensor,
    num_q_heads: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype, kv_fp8: bool = False,
) -> None:  # fmt: skip
    """Fix the launch plan of a CUDA-graph batch: `meta` holds B decode rows and
    `decode_graph_max_segments(B, L)` segment slots, whose tile starts (one more entry) live in
    `seg_tile_start`, refilled before every replay; entries past the real segments repeat the real
    total, so the grid, sized for the most tiles such a batch can have, runs only the real ones."""
    cfg = shared_prefix_config(num_q_heads, num_kv_heads, head_dim, dtype, kv_fp8=kv_fp8)
    group = num_q_heads // num_kv_heads
    batch = meta.num_seqs
    s_block_q = shape.s_block_m // group
    max_tiles = shape.num_levels * (-(-batch // s_block_q) + batch // 2)
    e_block_m = max(cfg.extend_block_m, next_pow2(group))
    num_warps = cfg.num_warps or (8 if shape.s_block_m >= 128 else 4)
    plan = LaunchPlan(
        seg_tile_start=seg_tile_start, num_seg_tiles=max_tiles, s_block_m=shape.s_block_m, s_block_q=s_block_q,
        splits=shape.splits, num_decodes=batch, n_extend_tiles=0, e_block_m=e_block_m, e_block_q=e_block_m // group,
        num_warps=num_warps, maxnreg=maxnreg_for(cfg, num_warps), fully_covered=False,
    )  # fmt: skip
    meta.shared.launch_plans[PlanKey(cfg, group, num_kv_heads, str(seg_tile_start.device), None)] = plan


class DecodeGraphPlanner:
    """The fused kernel's side of CUDA graphs of pure-decode batches with shared segments.

    Owns the static tile-start buffer every such graph reads ([max_segments + 1] int32, allocated with
    the first shared graph); the graph runner owns the segment tables and keeps this planner for as
    long as its graphs live.
    """

    def __init__(
        self, max_batch: int, max_levels: int, num_q_heads: int, num_kv_heads: int, head_dim: int,
        dtype: torch.dtype, device: torch.device, kv_fp8: bool = False,
    ) -> None:  # fmt: skip
        self.heads = (num_q_heads, num_kv_heads, head_dim)
        self.dtype, self.device, self.kv_fp8 = dtype, device, kv_fp8
        self.max_segments = decode_graph_max_segments(max_batch, max_levels)
        self._seg_tile_start: Optional[torch.Tensor] = None

    def graph_shape(self, batch_size: int, num_levels: int) -> DecodeGraphShape:
        return decode_graph_shape(batch_size, num_levels, *self.heads, self.dtype, self.device, self.kv_fp8)

    def prepare_for_capture(self, meta: AttentionMetadata, shape: DecodeGraphShape) -> None:
        """Pin the graph's plan on `meta` (its `shared` holds every segment slot of the bucket); no shared
        tiles run while capturing (rows then read only the padding block)."""
        if self._seg_tile_start is None:
            self._seg_tile_start = torch.zeros(self.max_segments + 1, dtype=torch.int32, device=self.device)
        tile_start = self._seg_tile_start[: meta.shared.num_segments + 1]
        pin_decode_graph_plan(meta, shape, tile_start, *self.heads, self.dtype, self.kv_fp8)
        self._seg_tile_start.zero_()

    def prepare_for_replay(self, shared: SharedPrefixMetadata, shape: DecodeGraphShape, num_slots: int) -> None:
        """Refill the tile starts the pinned plan reads from the real batch's segments."""
        group = self.heads[0] // self.heads[1]
        starts = decode_graph_tile_starts(shared, shape, group, num_slots, self.device)
        self._seg_tile_start[: num_slots + 1].copy_(starts)
