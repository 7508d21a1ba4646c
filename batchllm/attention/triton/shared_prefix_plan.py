"""Host-side planning of the fused prefix-shared launch: tile configs and the per-batch launch plan.

A plan is derived from the metadata's host copies only (no device sync): which tile heights the
shared and extend regions use, how many tiles each region has, the split-K factor of the shared
tiles, and the warps / register cap of the launch. Plans are cached per batch (graph_plan.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from batchllm.attention.metadata import AttentionMetadata
from batchllm.attention.triton.utils import is_interpreter, next_pow2, num_leading_decodes, num_sms
from batchllm.host_to_device import to_device


@dataclass(frozen=True)
class SharedPrefixConfig:
    """Tile shapes of the fused launch. shared_block_m caps the stacked rows of a shared tile (the
    actual M is the smallest power of two >= the largest segment's rows, at least 16)."""

    shared_block_m: int
    shared_block_n: int
    decode_block_n: int
    extend_block_m: int
    extend_block_n: int
    num_warps: int  # 0: 8 warps if some tile has >= 128 rows, else 4
    num_stages: int
    # Register cap per thread. None: 128 when 8 warps (a 128-row tile then still fits without spills
    # on sm_90 and two CTAs share an SM instead of one at ~190 registers); 0: no cap.
    maxnreg: int | None = None


# A launch with at least this many query tokens beyond one per sequence is prefill-heavy: its time is
# then the member-prefill and extend tiles', which want taller tiles and 8 warps.
PREFILL_HEAVY_TOKENS = 512


# Decode tiles of a 16-bit cache at head_dim <= 128, by name (set_decode_tiles picks one).
DECODE_TILES = {
    # Best of the config sweep on an H200 (bench_shared_prefix.py, degree 16, batch 256 and 1024).
    "short-keys": SharedPrefixConfig(64, 32, 64, 64, 64, 4, 3),
    # Best of the sweep at degrees 1-4 on an H200 (2026-12-03): 11-17 % faster than short-keys there, but
    # 2.8 % slower on realistic x 1024 and 1.3 % on micro x 1024 in the engine (H100, 2026-12-06): its
    # 64-row graph tiles take 83 KB of shared memory and spill 164 bytes at the cap (compile_check).
    "long-keys": SharedPrefixConfig(64, 64, 64, 64, 64, 4, 3, 128),
    # short-keys at 128 registers: four CTAs per SM instead of three (154 registers uncapped), 40 bytes
    # spilled. The default: 1.012x short-keys on realistic x 1024 (two pairs) and 1.028x on micro x 1024
    # (benchmarks/ab_engine.py, one H200, 2026-12-06).
    "short-keys-capped": SharedPrefixConfig(64, 32, 64, 64, 64, 4, 3, 128),
}
DEFAULT_DECODE_TILES = "short-keys-capped"
_decode_tiles = DEFAULT_DECODE_TILES


def set_decode_tiles(name: str) -> None:
    """Which DECODE_TILES entry 16-bit decode launches use from now on. CUDA graphs keep the tiles they
    were captured with: recapture them after a change (`ModelRunner.recapture_decode_graphs`)."""
    global _decode_tiles
    if name not in DECODE_TILES:
        raise ValueError(f"decode tiles must be one of {sorted(DECODE_TILES)}, not {name!r}")
    _decode_tiles = name


def is_prefill_heavy(num_tokens: int, num_seqs: int) -> bool:
    return num_tokens - num_seqs >= PREFILL_HEAVY_TOKENS


def shared_prefix_config(
    num_q_heads: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype, prefill_heavy: bool = False,
    kv_fp8: bool = False,
) -> SharedPrefixConfig:  # fmt: skip
    """Tile shapes for a launch; `prefill_heavy` launches (see is_prefill_heavy) get their own in 16-bit, and
    so do decode launches over an FP8 cache (`kv_fp8`)."""
    if dtype == torch.float32:  # twice the registers per element: smaller tiles
        return SharedPrefixConfig(64, 32, 32, 64, 32, 4, 2)
    if head_dim <= 128 and prefill_heavy:
        # Best of the prefill sweep on an H100 (bench_prefill_attention.py): 1.33-1.46x the decode tiles
        # on micro / multilevel prefill iterations, and at least as fast as the unfused paged kernel.
        return SharedPrefixConfig(128, 64, 64, 128, 64, 8, 2)
    if head_dim <= 128 and kv_fp8:
        # An FP8 tile holds half the bytes: twice the keys keep as many bytes in flight. Best of the sweep
        # on an H200 (bench_shared_prefix.py --kv-fp8, degree 16, batch 448, 2000 + 256 tokens, 2026-12-03):
        # 0.197 ms against 0.263 with the bf16 cache's tiles below (and 0.221 for a bf16 cache). Two stages,
        # not four: 0.197 against 0.209 ms there and 0.178 against 0.190 with 256 own tokens and no shared
        # prefix (H100, 2026-12-06; five stages 0.244 and 0.252).
        return SharedPrefixConfig(64, 64, 128, 64, 64, 4, 2, 128)
    if head_dim <= 128:
        return DECODE_TILES[_decode_tiles]
    return SharedPrefixConfig(64, 32, 32, 64, 32, 4, 2)


@dataclass(frozen=True)
class LaunchPlan:
    """Per-batch launch plan, derived from host copies only (no device sync)."""

    seg_tile_start: torch.Tensor  # [S + 1] int32 on the device: first global M-tile of each segment
    num_seg_tiles: int
    s_block_m: int
    s_block_q: int
    splits: int
    num_decodes: int  # leading q_len == 1 sequences (decode region)
    n_extend_tiles: int  # upper bound on the extend region's query tiles
    e_block_m: int
    e_block_q: int
    num_warps: int
    maxnreg: int  # 0: no cap
    fully_covered: bool  # every level covers every token (no -inf fill needed)


def _choose_shared_splits(
    seg_rows_tiles: np.ndarray, seg_kv_tiles: np.ndarray, distinct_work: int, num_kv_heads: int, sms: int
) -> int:
    """Split a segment's KV when its shared programs would be longer than the average work per
    program slot (~2 resident programs per SM): then they, not the total work, set the runtime."""
    if len(seg_kv_tiles) == 0:
        return 1
    work = int((seg_rows_tiles * seg_kv_tiles).sum()) * num_kv_heads + distinct_work
    per_slot = max(8.0, work / (2 * sms))
    longest = int(seg_kv_tiles.max())
    splits = 1
    while splits < 16 and longest / splits > per_slot:
        splits *= 2
    return splits


def make_plan(
    meta: AttentionMetadata, cfg: SharedPrefixConfig, group: int, num_kv_heads: int, device: torch.device,
    splits: int | None,
) -> LaunchPlan:  # fmt: skip
    shared = meta.shared
    qs = np.asarray(shared.seg_q_start_cpu, dtype=np.int64)
    qe = np.asarray(shared.seg_q_end_cpu, dtype=np.int64)
    kvs = np.asarray(shared.seg_kv_start_cpu, dtype=np.int64)
    kve = np.asarray(shared.seg_kv_end_cpu, dtype=np.int64)
    q_tokens = np.maximum(qe - qs, 0)
    max_rows = int(q_tokens.max()) * group if len(q_tokens) else 0
    # Two tile heights only (small groups / everything else): every distinct constexpr set is a separate
    # Triton JIT compile of seconds, paid mid-run the first time a batch shape needs it.
    small = max(16, next_pow2(group))
    s_block_m = small if max_rows <= small else max(small, cfg.shared_block_m)
    s_block_q = s_block_m // group
    tiles = -(-q_tokens // s_block_q)
    tile_start = np.concatenate([[0], np.cumsum(tiles)]).astype(np.int32)

    qsl = np.asarray(meta.query_start_loc_cpu, dtype=np.int64)
    q_lens = np.diff(qsl)
    num_decodes = num_leading_decodes(meta.query_start_loc_cpu)
    e_block_m = max(cfg.extend_block_m, next_pow2(group))
    e_block_q = e_block_m // group
    num_seqs = len(q_lens)
    n_rest_tokens = int(qsl[-1] - qsl[num_decodes])
    n_extend_tiles = n_rest_tokens // e_block_q + (num_seqs - num_decodes) if num_decodes < num_seqs else 0

    if splits is None:
        own_kv = np.asarray(meta.seq_lens_cpu, dtype=np.int64) - np.asarray(shared.distinct_kv_start_cpu, dtype=np.int64)
        distinct_work = int((-(-np.maximum(own_kv, 0) // cfg.decode_block_n)).sum()) * num_kv_heads
        splits = _choose_shared_splits(tiles, -(-(kve - kvs) // cfg.shared_block_n), distinct_work, num_kv_heads,
                                       num_sms(device))  # fmt: skip
    num_warps = cfg.num_warps or (8 if max(s_block_m, e_block_m if n_extend_tiles else 0) >= 128 else 4)
    maxnreg = maxnreg_for(cfg, num_warps)

    covered = np.zeros(max(shared.num_levels, 1), dtype=np.int64)
    np.add.at(covered, np.asarray(shared.seg_level_cpu, dtype=np.int64), q_tokens)
    fully_covered = bool((covered[: shared.num_levels] == qsl[-1]).all())
    return LaunchPlan(
        seg_tile_start=to_device(tile_start, torch.int32, device),
        num_seg_tiles=int(tile_start[-1]),
        s_block_m=s_block_m, s_block_q=s_block_q, splits=splits,
        num_decodes=num_decodes, n_extend_tiles=n_extend_tiles, e_block_m=e_block_m, e_block_q=e_block_q,
        num_warps=num_warps, maxnreg=maxnreg, fully_covered=fully_covered,
    )  # fmt: skip


def maxnreg_for(cfg: SharedPrefixConfig, num_warps: int) -> int:
    if cfg.maxnreg is not None:
        return cfg.maxnreg
    return 128 if num_warps == 8 else 0


def launch_opts(num_warps: int, maxnreg: int) -> dict:
    opts = dict(num_warps=num_warps)
    if maxnreg and not is_interpreter():
        opts["maxnreg"] = maxnreg
    return opts
