"""Timing and checking helpers shared by the attention benchmarks (bench_attention.py, bench_shared_prefix.py)."""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F


def bench_ms(device: str, fn) -> float:
    """Median milliseconds of fn on the GPU (triton's do_bench); one wall-clock call elsewhere (smoke runs)."""
    if device != "cuda":
        t = time.perf_counter()
        fn()
        return (time.perf_counter() - t) * 1e3
    from triton.testing import do_bench

    return float(do_bench(fn, warmup=25, rep=200, return_mode="median"))


def empty_cache(device: str) -> None:
    if device == "cuda":
        torch.cuda.empty_cache()


def copy_bandwidth(device: str, nbytes: int) -> float:
    """Bytes/s of a device-to-device copy (counting read + write), the practical HBM ceiling."""
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    ms = bench_ms(device, lambda: dst.copy_(src))
    del src, dst
    empty_cache(device)
    return 2 * nbytes / (ms * 1e-3)


def check(name, got, want, atol=2e-2, rtol=2e-2) -> None:
    err = (got.float() - want.float()).abs().max().item()
    torch.testing.assert_close(got.float(), want.float(), atol=atol, rtol=rtol, msg=lambda m: f"{name}: {m}")
    print(f"  check {name}: ok (max abs err {err:.2e})")


def gather_sdpa(query, k_cache, v_cache, meta, scale, ctx):
    """Baseline for equal-length decode: gather pages to [B, Hkv, ctx, D], one SDPA over all sequences."""
    batch, num_q_heads, head_dim = meta.num_seqs, query.shape[1], query.shape[2]
    num_kv_heads = k_cache.shape[2]
    bt = meta.block_tables.long()

    def gather(cache):  # [B, nblk, PAGE, Hkv, D] -> [B, Hkv, nblk * PAGE, D]
        return cache[bt].permute(0, 3, 1, 2, 4).reshape(batch, num_kv_heads, -1, head_dim)[:, :, :ctx]

    q = query.view(batch, num_kv_heads, num_q_heads // num_kv_heads, head_dim)  # G query heads act as G rows
    o = F.scaled_dot_product_attention(q, gather(k_cache), gather(v_cache), scale=scale)
    return o.reshape(batch, num_q_heads, head_dim)
