"""Prefix-shared decode attention: fused Triton kernel vs unfused paged kernel vs cascade vs SDPA vs floor.

Llama-3.1-8B attention (32 query / 8 KV heads, head_dim 128, bf16, block 16); every sequence = a
shared prefix of --prefix tokens (one per group of `degree` members) + --distinct own tokens, one
query token each (decode). For each (degree, batch) it checks the fused kernel against the unfused
one, then times (triton.testing.do_bench, median ms):

* fused      shared_prefix_attention_triton: shared + distinct tiles in one launch, then the merge
* sweep      best fused time over a small config sweep (tile sizes, warps, stages, register cap, split-K)
* unfused    paged_attention_triton ignoring the sharing (every member reads the whole prefix)
* cascade    the same work as separate shared / distinct / merge launches (FlashInfer-cascade style)
* sdpa       gather every sequence's pages to [B, Hkv, ctx, D], one SDPA call (G query heads as rows)
* floor      bytes that must move (prefix KV once per group + distinct KV per member + q + o) over
             the device copy bandwidth measured in this run

A correctness check of every kernel against the PyTorch reference (decode, suffix prefill, 2 levels)
runs first. Targets: fused >= 3x unfused at degree 16; fused within 1.5x of the floor.

    python benchmarks/bench_shared_prefix.py [--degrees 4,16,64] [--batches 256,1024] [--no-sweep] [--kv-fp8]
    python benchmarks/bench_shared_prefix.py --smoke     # CPU interpreter, tiny shapes (tests the script)

Prints a table last; writes $OUT/bench_shared_prefix.json when OUT is set.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict

import bench_setup  # noqa: E402,F401  (first: repo on sys.path, --smoke interpreter)

import torch  # noqa: E402


import triton  # noqa: E402
from attention_timing import bench_ms, check, copy_bandwidth, empty_cache, gather_sdpa  # noqa: E402

from batchllm.attention.reference import paged_attention_reference  # noqa: E402
from batchllm.attention.shared_prefix_reference import shared_prefix_attention_reference  # noqa: E402
from batchllm.attention.triton.graph_plan import get_plan as _get_plan  # noqa: E402
from batchllm.attention.triton.paged import paged_attention_triton  # noqa: E402
from batchllm.attention.triton.shared_prefix import shared_prefix_attention_triton  # noqa: E402
from batchllm.attention.triton.shared_prefix_plan import SharedPrefixConfig, shared_prefix_config  # noqa: E402
from batchllm.attention.triton.utils import set_fp8_kv_compute  # noqa: E402
from tests.attention.shared_prefix_workload import (  # noqa: E402
    PrefixNode,
    SeqSpec,
    make_shared_batch,
    uniform_groups,
    with_fp8_caches,
)

HQ, HKV, D, PAGE = 32, 8, 128, 16
DTYPE = torch.bfloat16
DEVICE = "cuda"
KV_FP8 = False  # --kv-fp8: the caches in e4m3 with per-head scales (kv_cache_dtype="fp8")







def correctness(prefix: int, distinct: int) -> None:
    """Every kernel vs the PyTorch references on this device, before any timing."""
    print("correctness vs reference:")
    half, quarter = max(PAGE, prefix // 2 // PAGE * PAGE), max(PAGE, prefix // 4 // PAGE * PAGE)
    nodes = [PrefixNode(-1, half), PrefixNode(0, half), PrefixNode(0, quarter), PrefixNode(-1, prefix)]
    seqs = [SeqSpec(1, distinct, 1)] * 6 + [SeqSpec(2, distinct // 2 + 1, 1)] * 3 + [SeqSpec(0, distinct, 1)]
    seqs += [SeqSpec(3, distinct, 1)] * 4 + [SeqSpec(-1, distinct, 1)]
    seqs += [SeqSpec(1, distinct, min(37, distinct)), SeqSpec(3, distinct, distinct // 2)]  # suffix prefill
    b = make_shared_batch(nodes, seqs, HQ, HKV, D, DTYPE, device=DEVICE, seed=1)
    args = (b.query, b.k_cache, b.v_cache, b.meta, b.scale)
    ref = paged_attention_reference(*args)
    check("cascade reference (torch) vs paged reference", shared_prefix_attention_reference(*args), ref)
    check("fused (2 levels, decode + suffix prefill)", shared_prefix_attention_triton(*args), ref)
    check("fused split-K 4", shared_prefix_attention_triton(*args, shared_splits=4), ref)
    check("cascade (3 launches)", shared_prefix_attention_triton(*args, cascade=True), ref)
    check("unfused paged", paged_attention_triton(*args), ref)
    del b, args, ref
    empty_cache(DEVICE)


def sweep_configs() -> list[tuple[SharedPrefixConfig, int | None]]:
    """(config, shared_splits) candidates; the default comes first. With an FP8 cache a KV tile holds half
    the bytes, so longer tiles (128 keys) are tried too: the same bytes in flight per pipeline stage."""
    base = shared_prefix_config(HQ, HKV, D, DTYPE, kv_fp8=KV_FP8)
    fp8_cands = [
        (SharedPrefixConfig(64, 64, 128, 64, 64, 4, 3), None),
        (SharedPrefixConfig(64, 128, 128, 64, 64, 4, 3), None),
        (SharedPrefixConfig(64, 128, 128, 64, 128, 8, 3), None),
        (SharedPrefixConfig(64, 64, 256, 64, 64, 4, 3, 128), None),
        (SharedPrefixConfig(64, 64, 64, 64, 64, 4, 4, 128), None),
        (SharedPrefixConfig(64, 64, 128, 64, 64, 4, 5, 128), None),
        (SharedPrefixConfig(64, 64, 128, 64, 64, 4, 2, 128), None),
        (SharedPrefixConfig(64, 64, 128, 64, 64, 8, 4, 128), None),
        (SharedPrefixConfig(64, 128, 128, 64, 64, 4, 4, 128), None),
        (SharedPrefixConfig(64, 64, 128, 64, 64, 4, 4, 0), None),
        (SharedPrefixConfig(64, 64, 128, 64, 64, 4, 4, 96), None),
    ] if KV_FP8 else []  # fmt: skip
    if KV_FP8:  # the 16-bit candidates below lost to the FP8 ones on every FP8 case so far
        return fp8_cands + [(base, None), (base, 2), (base, 4)]
    cands = [
        (base, None),
        (SharedPrefixConfig(128, 64, 64, 64, 64, 8, 3, 0), None),  # no register cap
        (SharedPrefixConfig(128, 64, 64, 64, 64, 8, 2), None),
        (SharedPrefixConfig(128, 64, 64, 64, 64, 8, 4), None),
        (SharedPrefixConfig(128, 32, 64, 64, 64, 8, 3), None),
        (SharedPrefixConfig(128, 128, 64, 64, 64, 8, 2), None),
        (SharedPrefixConfig(128, 64, 32, 64, 64, 8, 3), None),
        (SharedPrefixConfig(128, 64, 128, 64, 64, 8, 2), None),
        (SharedPrefixConfig(64, 64, 64, 64, 64, 4, 3), None),
        (SharedPrefixConfig(64, 64, 64, 64, 64, 4, 4), None),
        (SharedPrefixConfig(64, 64, 64, 64, 64, 4, 3, 128), None),
        (SharedPrefixConfig(64, 32, 64, 64, 64, 4, 3), None),
    ]
    return cands + [(base, 1), (base, 2), (base, 4), (base, 8)]


def fused_sweep(args, out) -> tuple[float, dict]:
    best_ms, best = float("inf"), {}
    for cfg, splits in sweep_configs():
        try:
            ms = bench_ms(DEVICE, lambda: shared_prefix_attention_triton(*args, out=out, config=cfg, shared_splits=splits))
        except Exception as exc:  # e.g. out of shared memory for this config
            print(f"    sweep skip {cfg} splits={splits}: {type(exc).__name__}: {str(exc)[:100]}")
            continue
        tiles = (cfg.shared_block_m, cfg.shared_block_n, cfg.decode_block_n, cfg.num_warps, cfg.num_stages, cfg.maxnreg)
        print(f"    sweep {ms:.4f} ms  shared_m/n decode_n warps stages maxnreg {tiles} splits={splits}")
        if ms < best_ms:
            best_ms, best = ms, dict(asdict(cfg), shared_splits=splits)
    return best_ms, best


def bench_case(degree: int, batch: int, prefix: int, distinct: int, bandwidth: float, sweep: bool) -> dict:
    groups = batch // degree
    nodes, seqs = uniform_groups(groups, degree, prefix, distinct)
    b = make_shared_batch(nodes, seqs, HQ, HKV, D, DTYPE, device=DEVICE, seed=degree * 7 + batch, poison=False)
    if KV_FP8:
        b = with_fp8_caches(b, torch.full((HKV,), 0.75), torch.full((HKV,), 1.25))
    args = (b.query, b.k_cache, b.v_cache, b.meta, b.scale)
    ctx = prefix + distinct
    out = torch.empty_like(b.query)
    unfused = paged_attention_triton(*args)
    check(f"degree {degree} B={batch}: fused vs unfused", shared_prefix_attention_triton(*args), unfused)
    plan = _get_plan(b.meta, shared_prefix_config(HQ, HKV, D, DTYPE), HQ // HKV, HKV, b.query.device, None)
    row = dict(degree=degree, batch=batch, groups=groups, prefix=prefix, distinct=distinct,
               shared_block_m=plan.s_block_m, shared_splits=plan.splits, num_warps=plan.num_warps)  # fmt: skip
    row["fused_ms"] = bench_ms(DEVICE, lambda: shared_prefix_attention_triton(*args, out=out))
    row["unfused_ms"] = bench_ms(DEVICE, lambda: paged_attention_triton(*args, out=out))
    row["cascade_ms"] = bench_ms(DEVICE, lambda: shared_prefix_attention_triton(*args, out=out, cascade=True))
    if KV_FP8:  # the same launches with FP8 dots (set_fp8_kv_compute("fp8")) instead of widened K/V
        set_fp8_kv_compute("fp8")
        try:
            dots = shared_prefix_attention_triton(*args)
            row["dots_vs_widened_max_abs"] = (dots.float() - unfused.float()).abs().max().item()
            row["dots_vs_widened_rel_rms"] = ((dots.float() - unfused.float()).norm() / unfused.float().norm()).item()
            row["fused_dots_ms"] = bench_ms(DEVICE, lambda: shared_prefix_attention_triton(*args, out=out))
            row["unfused_dots_ms"] = bench_ms(DEVICE, lambda: paged_attention_triton(*args, out=out))
            if sweep:
                row["sweep_dots_ms"], row["sweep_dots_best"] = fused_sweep(args, out)
        finally:
            set_fp8_kv_compute("fp16")
        print(f"  degree {degree:3d} B={batch:5d}: FP8 dots fused {row['fused_dots_ms']:.3f} ms, unfused "
              f"{row['unfused_dots_ms']:.3f}, vs widened max abs {row['dots_vs_widened_max_abs']:.4f} rel rms "
              f"{row['dots_vs_widened_rel_rms']:.4f}"
              + (f", sweep best {row['sweep_dots_ms']:.3f} {row['sweep_dots_best']}" if sweep else ""))  # fmt: skip
    row["sdpa_ms"] = float("nan")
    if not KV_FP8:  # SDPA takes no FP8 operands
        try:
            check(f"degree {degree} B={batch}: gather+sdpa vs unfused", gather_sdpa(*args, ctx), unfused)
            row["sdpa_ms"] = bench_ms(DEVICE, lambda: gather_sdpa(*args, ctx))
        except torch.OutOfMemoryError:
            pass
    empty_cache(DEVICE)
    elem = b.query.element_size()
    kv_token = HKV * D * 2 * b.k_cache.element_size()  # K and V of one token
    need = groups * prefix * kv_token + batch * distinct * kv_token + 2 * batch * HQ * D * elem
    row["floor_ms"] = need / bandwidth * 1e3
    row["unfused_floor_ms"] = (batch * ctx * kv_token + 2 * batch * HQ * D * elem) / bandwidth * 1e3
    row["fused_gbps"] = need / (row["fused_ms"] * 1e-3) / 1e9
    if sweep:
        row["sweep_ms"], row["sweep_best"] = fused_sweep(args, out)
    print(f"  degree {degree:3d} B={batch:5d}: fused {row['fused_ms']:.3f} ms, unfused {row['unfused_ms']:.3f}, "
          f"cascade {row['cascade_ms']:.3f}, sdpa {row['sdpa_ms']:.3f}, floor {row['floor_ms']:.3f}"
          + (f", sweep best {row['sweep_ms']:.3f} {row['sweep_best']}" if sweep else ""))  # fmt: skip
    del b, args, out, unfused
    empty_cache(DEVICE)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description="prefix-shared decode attention benchmark")
    parser.add_argument("--degrees", default="4,16,64")
    parser.add_argument("--batches", default="256,1024")
    parser.add_argument("--prefix", type=int, default=2000)
    parser.add_argument("--distinct", type=int, default=200)
    parser.add_argument("--no-sweep", action="store_true", help="skip the fused config sweep")
    parser.add_argument("--sweep-all", action="store_true", help="sweep every row (default: degree 16 rows only)")
    parser.add_argument("--kv-fp8", action="store_true", help="FP8 (e4m3) caches, as kv_cache_dtype='fp8'")
    parser.add_argument("--smoke", action="store_true", help="CPU interpreter, tiny shapes: tests the script only")
    args = parser.parse_args()
    global DEVICE, HQ, HKV, D, KV_FP8
    KV_FP8 = args.kv_fp8
    if args.smoke:
        DEVICE, HQ, HKV, D = "cpu", 4, 2, 32
        args.degrees, args.batches, args.prefix, args.distinct = "2,4", "8", 32, 9
    elif not torch.cuda.is_available():
        sys.exit("bench_shared_prefix.py needs a CUDA GPU (or --smoke)")
    if args.prefix % PAGE:
        sys.exit(f"--prefix must be a multiple of the block size {PAGE}")
    device = torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu (interpreter smoke run)"
    print(f"device {device}, torch {torch.__version__}, triton {triton.__version__}")
    t0 = time.time()
    correctness(args.prefix, args.distinct)
    bandwidth = copy_bandwidth(DEVICE, 4 << 30 if DEVICE == "cuda" else 1 << 20)
    print(f"device copy bandwidth: {bandwidth / 1e9:.0f} GB/s (read + write)")
    rows = []
    for degree in (int(x) for x in args.degrees.split(",")):
        for batch in (int(x) for x in args.batches.split(",")):
            sweep = not args.no_sweep and (args.sweep_all or degree == 16 or args.smoke)
            rows.append(bench_case(degree, batch, args.prefix, args.distinct, bandwidth, sweep))

    print(f"\nPrefix-shared decode attention, Llama-3.1-8B heads ({HQ}q/{HKV}kv, D {D}, bf16, {'FP8' if KV_FP8 else 'bf16'} KV, page {PAGE}), "
          f"prefix {args.prefix} + distinct {args.distinct}, {device}, copy bw {bandwidth / 1e9:.0f} GB/s; "
          "median ms")  # fmt: skip
    head = (f"{'deg':>4} {'batch':>5} {'fused':>8} {'sweep':>8} {'unfused':>8} {'cascade':>8} {'sdpa':>8} "
            f"{'floor':>8} {'unf/fused':>9} {'fused/floor':>11} {'GB/s':>6}")  # fmt: skip
    print(head)
    for r in rows:
        sw = f"{r['sweep_ms']:8.3f}" if "sweep_ms" in r else f"{'-':>8}"
        print(f"{r['degree']:>4} {r['batch']:>5} {r['fused_ms']:8.3f} {sw} {r['unfused_ms']:8.3f} {r['cascade_ms']:8.3f} "
              f"{r['sdpa_ms']:8.3f} {r['floor_ms']:8.3f} {r['unfused_ms'] / r['fused_ms']:9.2f} "
              f"{r['fused_ms'] / r['floor_ms']:11.2f} {r['fused_gbps']:6.0f}")  # fmt: skip
    for r in rows:
        if "sweep_best" in r:
            print(f"  best sweep config degree {r['degree']} B={r['batch']}: {r['sweep_ms']:.3f} ms {r['sweep_best']}")
    print("targets: unf/fused >= 3 at degree 16; fused/floor <= 1.5")
    print(f"total {time.time() - t0:.0f} s")
    result = dict(device=device, torch=torch.__version__, triton=triton.__version__,
                  copy_bandwidth_gbps=bandwidth / 1e9, rows=rows)  # fmt: skip
    if os.environ.get("OUT"):
        path = os.path.join(os.environ["OUT"], "bench_shared_prefix.json")
        with open(path, "w") as f:
            json.dump(result, f, indent=2)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
