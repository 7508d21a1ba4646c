"""Where a prefix-shared decode launch spends its time: shared tiles, distinct tiles and merge, each
against its own byte floor, and the distinct tiles against the paged kernel on the same distinct KV.

Llama-3.1-8B attention (32 query / 8 KV heads, head_dim 128, block 16), `--groups` groups of `--degree`
members, a `--prefix`-token shared prefix per group and `--distinct` own tokens per member, one query
token each. The cascade variant runs the fused kernel's regions as separate launches (shared, distinct,
merge); a profiler splits its device time by launch. Then the distinct region alone, over a batch of
the same sequences without a shared prefix: the fused kernel (its distinct tiles + the merge) and
`paged_attention_triton`, each for every decode tile shape in --decode-tiles.

    python benchmarks/bench_decode_regions.py [--kv-fp8 [--fp8-kv-compute fp8-qk]] [--groups 28] [--degree 16] [--prefix 2000] [--distinct 256]
    python benchmarks/bench_decode_regions.py --smoke     # CPU interpreter, tiny shapes (tests the script)

Prints a table last; writes $OUT/bench_decode_regions.json when OUT is set.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

import bench_setup  # noqa: F401  (first: repo on sys.path, --smoke interpreter)

import torch  # noqa: E402
from attention_timing import bench_ms, check, copy_bandwidth  # noqa: E402

from batchllm.attention.reference import paged_attention_reference  # noqa: E402
from batchllm.attention.triton.paged import TileConfig, paged_attention_triton  # noqa: E402
from batchllm.attention.triton.shared_prefix import shared_prefix_attention_triton  # noqa: E402
from batchllm.attention.triton.shared_prefix_plan import shared_prefix_config  # noqa: E402
from batchllm.attention.triton.utils import set_fp8_kv_compute  # noqa: E402
from tests.attention.shared_prefix_workload import (  # noqa: E402
    PrefixNode,
    SeqSpec,
    make_shared_batch,
    uniform_groups,
    with_fp8_caches,
)

PAGE = 16


def launch_times_ms(fn, launches: int, device: str, iters: int = 20) -> list[float]:
    """Mean device milliseconds of each of the `launches` kernels fn issues, in issue order."""
    if device != "cuda":
        fn()
        return [float("nan")] * launches
    from torch.profiler import ProfilerActivity, profile

    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            fn()
        torch.cuda.synchronize()
    kernels = sorted((e for e in prof.events() if e.device_type.name == "CUDA" and "kernel" in e.name.lower()),
                     key=lambda e: e.time_range.start)  # fmt: skip
    kernels = [e for e in kernels if "fill" not in e.name.lower()]  # the LSE fill of uncovered levels
    if len(kernels) != launches * iters:
        raise RuntimeError(f"expected {launches * iters} kernels, saw {len(kernels)}: {sorted({e.name for e in kernels})}")
    return [sum(e.time_range.elapsed_us() for e in kernels[i::launches]) / iters / 1e3 for i in range(launches)]


def make_batch(nodes, seqs, args, device):
    b = make_shared_batch(nodes, seqs, args.hq, args.hkv, args.head_dim, torch.bfloat16, device=device, seed=3, poison=False)
    if args.kv_fp8:
        b = with_fp8_caches(b, torch.full((args.hkv,), 0.75), torch.full((args.hkv,), 1.25))
    return b


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--groups", type=int, default=28)
    parser.add_argument("--degree", type=int, default=16)
    parser.add_argument("--prefix", type=int, default=2000)
    parser.add_argument("--distinct", type=int, default=256)
    parser.add_argument("--kv-fp8", action="store_true")
    parser.add_argument("--fp8-kv-compute", default="fp16", help="set_fp8_kv_compute's mode (with --kv-fp8)")
    parser.add_argument("--decode-tiles", default="32:3,64:2,64:3,64:4,128:2,128:3",
                        help="decode_block_n:num_stages pairs tried on the distinct region")  # fmt: skip
    parser.add_argument("--smoke", action="store_true", help="CPU interpreter, tiny shapes: tests the script only")
    args = parser.parse_args()
    args.hq, args.hkv, args.head_dim = 32, 8, 128
    device = "cuda"
    if args.smoke:
        device, args.hq, args.hkv, args.head_dim = "cpu", 4, 2, 32
        args.groups, args.degree, args.prefix, args.distinct, args.decode_tiles = 2, 3, 32, 20, "32:2"
    elif not torch.cuda.is_available():
        sys.exit("bench_decode_regions.py needs a CUDA GPU (or --smoke)")
    set_fp8_kv_compute(args.fp8_kv_compute)
    # FP8 dots round q (and p) to e4m3: the kernel tests' bound (tests/attention/test_fp8_kv_kernels.py)
    tol = dict(atol=0.15, rtol=0.1) if args.kv_fp8 and args.fp8_kv_compute != "fp16" else {}
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu (interpreter smoke run)"
    bandwidth = copy_bandwidth(device, 4 << 30 if device == "cuda" else 1 << 20)
    batch = args.groups * args.degree
    b = make_batch(*uniform_groups(args.groups, args.degree, args.prefix, args.distinct), args, device)
    call = (b.query, b.k_cache, b.v_cache, b.meta, b.scale)
    ref = paged_attention_reference(*call)
    check("fused vs reference", shared_prefix_attention_triton(*call), ref, **tol)
    kv_token = args.hkv * args.head_dim * 2 * b.k_cache.element_size()
    qo = 2 * batch * args.hq * args.head_dim * b.query.element_size()
    part = batch * args.hq * args.head_dim * 4  # one fp32 partial O
    floors = dict(shared=args.groups * args.prefix * kv_token, distinct=batch * args.distinct * kv_token + part,
                  merge=2 * part + qo // 2)  # fmt: skip
    out = torch.empty_like(b.query)
    rows = [dict(region="fused (one launch + merge)", ms=bench_ms(device, lambda: shared_prefix_attention_triton(*call, out=out)),
                 floor_ms=(floors["shared"] + batch * args.distinct * kv_token + qo) / bandwidth * 1e3)]  # fmt: skip
    cascade = launch_times_ms(lambda: shared_prefix_attention_triton(*call, out=out, cascade=True), 3, device)
    for region, ms in zip(("shared", "distinct", "merge"), cascade):
        rows.append(dict(region=f"cascade {region}", ms=ms, floor_ms=floors[region] / bandwidth * 1e3))
    del b, call, ref

    own = make_batch([PrefixNode(-1, PAGE)], [SeqSpec(-1, args.distinct, 1)] * batch, args, device)
    call = (own.query, own.k_cache, own.v_cache, own.meta, own.scale)
    ref = paged_attention_reference(*call)
    own_floor = (batch * args.distinct * kv_token + qo) / bandwidth * 1e3
    base = shared_prefix_config(args.hq, args.hkv, args.head_dim, torch.bfloat16, kv_fp8=args.kv_fp8)
    for spec in args.decode_tiles.split(","):
        block_n, stages = (int(x) for x in spec.split(":"))
        for maxnreg in (base.maxnreg or 0, 0) if base.maxnreg else (0,):
            cfg = dataclasses.replace(base, decode_block_n=block_n, num_stages=stages, maxnreg=maxnreg)
            check(f"distinct-only fused {spec} r{maxnreg}", shared_prefix_attention_triton(*call, config=cfg), ref, **tol)
            fused = launch_times_ms(lambda: shared_prefix_attention_triton(*call, out=out, config=cfg), 2, device)
            rows.append(dict(region=f"distinct-only fused n{block_n} s{stages} r{maxnreg}", ms=fused[0],
                             merge_ms=fused[1], floor_ms=own_floor))  # fmt: skip
        tile = TileConfig(max(16, args.hq // args.hkv), 1, block_n, 4, stages)
        check(f"distinct-only paged {spec}", paged_attention_triton(*call, decode_cfg=tile, num_splits=1), ref, **tol)
        ms = bench_ms(device, lambda: paged_attention_triton(*call, out=out, decode_cfg=tile, num_splits=1))
        rows.append(dict(region=f"distinct-only paged n{block_n} s{stages}", ms=ms, floor_ms=own_floor))

    print(f"\n{name}, {'FP8 (' + args.fp8_kv_compute + ')' if args.kv_fp8 else 'bf16'} KV, {args.groups} groups x {args.degree}, prefix {args.prefix}, "
          f"distinct {args.distinct}, copy bw {bandwidth / 1e9:.0f} GB/s; ms per call")  # fmt: skip
    print(f"{'region':44s} {'ms':>8} {'floor':>8} {'x floor':>8}")
    for r in rows:
        extra = f"  (+ merge {r['merge_ms']:.4f})" if "merge_ms" in r else ""
        print(f"{r['region']:44s} {r['ms']:8.4f} {r['floor_ms']:8.4f} {r['ms'] / r['floor_ms']:8.2f}{extra}")
    if os.environ.get("OUT"):
        with open(os.path.join(os.environ["OUT"], "bench_decode_regions.json"), "w") as f:
            json.dump(dict(device=name, args=vars(args), copy_bandwidth_gbps=bandwidth / 1e9, rows=rows), f, indent=2)


if __name__ == "__main__":
    main()
