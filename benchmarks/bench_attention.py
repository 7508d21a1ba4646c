"""Decode attention on the paged KV cache: Triton kernel vs gather+SDPA vs the HBM floor (GPU only).

Llama-3.1-8B attention (32 query / 8 KV heads, head_dim 128, bf16, block 16), every sequence at
the same context length. For each batch size it checks the kernel against the reference, then
times (triton.testing.do_bench, median):

* triton      paged_attention_triton with its default (heuristic) config
* sweep       best of a small config sweep (BLOCK_N, warps, stages, split-K); says what to tune
* gather+sdpa vectorised baseline: gather every sequence's KV pages into [B, Hkv, S, D], then one
              SDPA call with the G query heads of a KV head as G "query tokens" (exact for decode)
* floor       KV bytes / device copy bandwidth measured in this run (read + write of a big tensor)

Also one prefill row (causal, 4 x 2048 tokens) as a sanity check of the prefill kernel's TFLOP/s.

    python benchmarks/bench_attention.py [--batches 32,256,1024] [--ctx 2200] [--no-sweep]

Prints a table last; writes $OUT/bench_attention.json when OUT is set.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import bench_setup  # noqa: E402,F401  (first: repo on sys.path, --smoke interpreter)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402


import triton  # noqa: E402
from attention_timing import bench_ms, check, copy_bandwidth, empty_cache, gather_sdpa  # noqa: E402

from batchllm.attention.metadata import AttentionMetadata  # noqa: E402
from batchllm.attention.reference import paged_attention_reference  # noqa: E402
from batchllm.attention.triton.paged import (  # noqa: E402
    TileConfig,
    choose_num_splits,
    num_sms,
    decode_config,
    paged_attention_triton,
    prefill_config,
)

HQ, HKV, D, PAGE = 32, 8, 128, 16
DTYPE = torch.bfloat16
DEVICE = "cuda"  # --smoke switches to the CPU interpreter (tiny shapes) to test this script itself





def make_decode_batch(batch: int, ctx: int, seed: int = 0, q_lens: list[int] | None = None):
    """KV for `batch` sequences of `ctx` tokens in randomly permuted pages; q_lens default 1 (decode)."""
    g = torch.Generator(device=DEVICE).manual_seed(seed)
    q_lens = q_lens or [1] * batch
    nblk = math.ceil(ctx / PAGE)
    num_blocks = batch * nblk + 1
    perm = torch.randperm(num_blocks - 1, device=DEVICE, generator=g) + 1
    block_tables = perm.view(batch, nblk).to(torch.int32)
    k_cache = torch.randn(num_blocks, PAGE, HKV, D, device=DEVICE, dtype=DTYPE, generator=g)
    v_cache = torch.randn(num_blocks, PAGE, HKV, D, device=DEVICE, dtype=DTYPE, generator=g)
    qsl = [0]
    for q in q_lens:
        qsl.append(qsl[-1] + q)
    query = torch.randn(qsl[-1], HQ, D, device=DEVICE, dtype=DTYPE, generator=g)
    pos = torch.cat([torch.arange(ctx - q, ctx, device=DEVICE) for q in q_lens])
    seq_idx = torch.repeat_interleave(torch.arange(batch, device=DEVICE), torch.tensor(q_lens, device=DEVICE))
    slots = block_tables[seq_idx, pos // PAGE].long() * PAGE + pos % PAGE
    meta = AttentionMetadata(
        query_start_loc=torch.tensor(qsl, dtype=torch.int32, device=DEVICE),
        seq_lens=torch.full((batch,), ctx, dtype=torch.int32, device=DEVICE),
        block_tables=block_tables,
        slot_mapping=slots,
        max_query_len=max(q_lens),
        max_seq_len=ctx,
        query_start_loc_cpu=qsl,
        seq_lens_cpu=[ctx] * batch,
    )
    return query, k_cache, v_cache, meta




def correctness(ctx: int, scale: float) -> None:
    """Kernel vs the PyTorch reference on this GPU before any timing (decode, split-K, mixed)."""
    print("correctness vs reference:")
    query, k, v, meta = make_decode_batch(8, ctx, seed=1)
    ref = paged_attention_reference(query, k, v, meta, scale)
    check("decode B=8 (auto split)", paged_attention_triton(query, k, v, meta, scale), ref)
    check("decode B=8 split=1", paged_attention_triton(query, k, v, meta, scale, num_splits=1), ref)
    check("gather+sdpa baseline", gather_sdpa(query, k, v, meta, scale, ctx), ref)
    q_lens = [1] * 5 + [min(512, ctx // 2), ctx, min(37, ctx)]
    query, k, v, meta = make_decode_batch(len(q_lens), ctx, seed=2, q_lens=q_lens)
    ref = paged_attention_reference(query, k, v, meta, scale)
    check("mixed decode+extend+prefill", paged_attention_triton(query, k, v, meta, scale), ref)
    del query, k, v, meta, ref
    empty_cache(DEVICE)


def decode_sweep(query, k, v, meta, scale, batch: int) -> tuple[float, dict]:
    """Best time over tile configs (at the heuristic split count), then over split counts (at the best tile)."""
    base = decode_config(HQ, HKV, D, DTYPE)
    auto_splits = choose_num_splits(batch, HKV, meta.max_seq_len, base.block_n, query.device)
    out = torch.empty_like(query)

    def run(cfg: TileConfig, splits: int) -> float:
        try:
            return bench_ms(DEVICE, 
                lambda: paged_attention_triton(query, k, v, meta, scale, out=out, num_splits=splits, decode_cfg=cfg)
            )
        except Exception as exc:  # e.g. a config that needs more shared memory than the SM has
            print(f"  sweep skip {cfg} splits={splits}: {type(exc).__name__}")
            return float("inf")

    best_ms, best_cfg = float("inf"), base
    for block_n in (32, 64, 128):
        for warps in (4, 8):
            for stages in (2, 3, 4):
                cfg = TileConfig(base.block_m, 1, block_n, warps, stages)
                ms = run(cfg, auto_splits)
                if ms < best_ms:
                    best_ms, best_cfg = ms, cfg
    best_splits = auto_splits
    if batch * HKV < 8 * num_sms(query.device):  # split-K only matters while B * Hkv programs do not fill the GPU
        for splits in (1, 2, 4, 8, 16):
            if splits != auto_splits and (ms := run(best_cfg, splits)) < best_ms:
                best_ms, best_splits = ms, splits
    return best_ms, dict(block_n=best_cfg.block_n, num_warps=best_cfg.num_warps,
                         num_stages=best_cfg.num_stages, num_splits=best_splits)  # fmt: skip


def bench_decode(batch: int, ctx: int, scale: float, bandwidth: float, sweep: bool) -> dict:
    query, k, v, meta = make_decode_batch(batch, ctx, seed=batch)
    out = torch.empty_like(query)
    got = paged_attention_triton(query, k, v, meta, scale, out=out)
    check(f"decode B={batch} triton vs gather+sdpa", got, gather_sdpa(query, k, v, meta, scale, ctx))
    splits = choose_num_splits(batch, HKV, ctx, decode_config(HQ, HKV, D, DTYPE).block_n, query.device)
    t_triton = bench_ms(DEVICE, lambda: paged_attention_triton(query, k, v, meta, scale, out=out))
    t_sdpa = bench_ms(DEVICE, lambda: gather_sdpa(query, k, v, meta, scale, ctx))
    kv_bytes = batch * ctx * HKV * D * 2 * k.element_size()
    row = dict(
        kind="decode", batch=batch, ctx=ctx, num_splits=splits,
        triton_ms=t_triton, gather_sdpa_ms=t_sdpa, floor_ms=kv_bytes / bandwidth * 1e3,
        kv_gbytes=kv_bytes / 1e9, triton_gbps=kv_bytes / (t_triton * 1e-3) / 1e9,
    )  # fmt: skip
    if sweep:
        row["sweep_ms"], row["sweep_best"] = decode_sweep(query, k, v, meta, scale, batch)
    print(f"  B={batch}: triton {t_triton:.3f} ms, gather+sdpa {t_sdpa:.3f} ms, floor {row['floor_ms']:.3f} ms"
          + (f", sweep best {row['sweep_ms']:.3f} ms {row['sweep_best']}" if sweep else ""))
    del query, k, v, meta, out
    empty_cache(DEVICE)
    return row


def bench_prefill(scale: float, seqs: int = 4, length: int = 2048) -> dict:
    """Causal prefill: Triton paged kernel vs SDPA (flash) on contiguous KV with KV heads repeated."""
    query, k, v, meta = make_decode_batch(seqs, length, seed=7, q_lens=[length] * seqs)
    ref = paged_attention_reference(query[: 2 * length], k, v, _first_seqs(meta, 2), scale)
    got = paged_attention_triton(query, k, v, meta, scale)
    check(f"prefill {seqs}x{length} (first 2 seqs)", got[: 2 * length], ref)
    out = torch.empty_like(query)
    t_triton = bench_ms(DEVICE, lambda: paged_attention_triton(query, k, v, meta, scale, out=out))
    bt = meta.block_tables.long()
    kc = k[bt].flatten(1, 2)[:, :length].transpose(1, 2).repeat_interleave(HQ // HKV, 1).contiguous()
    vc = v[bt].flatten(1, 2)[:, :length].transpose(1, 2).repeat_interleave(HQ // HKV, 1).contiguous()
    qc = query.view(seqs, length, HQ, D).transpose(1, 2).contiguous()
    t_sdpa = bench_ms(DEVICE, lambda: F.scaled_dot_product_attention(qc, kc, vc, is_causal=True, scale=scale))
    flops = 4 * seqs * HQ * D * length * length / 2  # causal: half the square
    cfg = prefill_config(HQ, HKV, D, DTYPE)
    row = dict(kind="prefill", batch=seqs, ctx=length, triton_ms=t_triton, sdpa_contiguous_ms=t_sdpa,
               triton_tflops=flops / (t_triton * 1e-3) / 1e12, sdpa_tflops=flops / (t_sdpa * 1e-3) / 1e12,
               config=cfg.__dict__)  # fmt: skip
    print(f"  prefill {seqs}x{length}: triton {t_triton:.3f} ms ({row['triton_tflops']:.0f} TFLOP/s), "
          f"sdpa {t_sdpa:.3f} ms ({row['sdpa_tflops']:.0f} TFLOP/s)")
    return row


def _first_seqs(meta: AttentionMetadata, n: int) -> AttentionMetadata:
    qsl = meta.query_start_loc_cpu[: n + 1]
    return AttentionMetadata(
        query_start_loc=meta.query_start_loc[: n + 1], seq_lens=meta.seq_lens[:n],
        block_tables=meta.block_tables[:n], slot_mapping=meta.slot_mapping[: qsl[-1]],
        max_query_len=meta.max_query_len, max_seq_len=meta.max_seq_len,
        query_start_loc_cpu=qsl, seq_lens_cpu=meta.seq_lens_cpu[:n],
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description="paged decode attention benchmark")
    parser.add_argument("--batches", default="32,256,1024", help="comma-separated batch sizes (32 exercises split-K)")
    parser.add_argument("--ctx", type=int, default=2200)
    parser.add_argument("--no-sweep", action="store_true", help="skip the decode config sweep")
    parser.add_argument("--no-prefill", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="CPU interpreter, tiny shapes: tests the script only")
    args = parser.parse_args()
    global DEVICE, HQ, HKV, D
    if args.smoke:
        DEVICE, HQ, HKV, D = "cpu", 4, 2, 32
    elif not torch.cuda.is_available():
        sys.exit("bench_attention.py needs a CUDA GPU (or --smoke with TRITON_INTERPRET=1)")
    scale = D**-0.5
    device = torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu (interpreter smoke run)"
    print(f"device {device}, torch {torch.__version__}, triton {triton.__version__}")
    t0 = time.time()
    correctness(args.ctx, scale)
    bandwidth = copy_bandwidth(DEVICE, 4 << 30 if DEVICE == "cuda" else 1 << 20)
    print(f"device copy bandwidth: {bandwidth / 1e9:.0f} GB/s (read + write)")
    rows = [bench_decode(int(b), args.ctx, scale, bandwidth, not args.no_sweep) for b in args.batches.split(",")]
    prefill = None if args.no_prefill else bench_prefill(scale, *((4, 2048) if DEVICE == "cuda" else (2, 40)))

    print(f"\nDecode attention, Llama-3.1-8B heads ({HQ}q/{HKV}kv, D {D}, bf16, page {PAGE}), ctx {args.ctx}, "
          f"{device}, copy bw {bandwidth / 1e9:.0f} GB/s; times in ms (median)")
    head = f"{'batch':>6} {'splits':>6} {'triton':>8} {'sweep':>8} {'gath+sdpa':>10} {'floor':>8} {'triton GB/s':>12} {'% of bw':>8}"
    print(head)
    for r in rows:
        sweep = f"{r['sweep_ms']:8.3f}" if "sweep_ms" in r else f"{'-':>8}"
        print(f"{r['batch']:>6} {r['num_splits']:>6} {r['triton_ms']:8.3f} {sweep} {r['gather_sdpa_ms']:10.3f} "
              f"{r['floor_ms']:8.3f} {r['triton_gbps']:12.0f} {100 * r['floor_ms'] / r['triton_ms']:7.0f}%")
    for r in rows:
        if "sweep_best" in r:
            print(f"  best sweep config B={r['batch']}: {r['sweep_best']}")
    if prefill:
        print(f"prefill {prefill['batch']}x{prefill['ctx']} causal: triton {prefill['triton_ms']:.3f} ms "
              f"({prefill['triton_tflops']:.0f} TFLOP/s), SDPA contiguous {prefill['sdpa_contiguous_ms']:.3f} ms "
              f"({prefill['sdpa_tflops']:.0f} TFLOP/s)")
    print(f"total {time.time() - t0:.0f} s")
    result = dict(device=device, torch=torch.__version__, triton=triton.__version__,
                  copy_bandwidth_gbps=bandwidth / 1e9, decode=rows, prefill=prefill)  # fmt: skip
    if os.environ.get("OUT"):
        path = os.path.join(os.environ["OUT"], "bench_attention.json")
        with open(path, "w") as f:
            json.dump(result, f, indent=2)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
