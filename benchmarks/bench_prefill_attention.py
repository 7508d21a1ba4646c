"""Prefill-heavy attention batches: fused prefix-shared kernel (default and swept tile configs) vs the
unfused paged kernel vs dense SDPA at the same FLOPs.

Llama-3.1-8B attention (32 query / 8 KV heads, head_dim 128, bf16, block 16). Cases are the shapes of
the engine's prefill-heavy iterations:

* micro-members   2 groups x 16 members, prefix 2000 cached, each member's 200 own tokens as queries
* micro-mixed     the same plus 512 leading decode rows of 32 other groups (decode-first iterations)
* prefix-prefill  4 prompts of 2000 tokens, no cache (the prefix requests of micro's groups)
* multilevel      4 documents of 1536 under one 512-token system prompt, 8 questions of 100 each

For each it checks the kernels against each other, then prints median ms and achieved TFLOP/s
(causal attention FLOPs: 4 * Hq * D * sum over query tokens of the keys they see). `sdpa` is
F.scaled_dot_product_attention on dense [members, Hq, q, D] x [members, Hq, ctx, D] without a mask:
the rate a vendor kernel reaches on the same FLOPs, as a yardstick.

    python benchmarks/bench_prefill_attention.py            # GPU
    python benchmarks/bench_prefill_attention.py --smoke    # CPU interpreter, tiny shapes (tests the script)
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import asdict

import bench_setup  # noqa: E402,F401  (first: repo on sys.path, --smoke interpreter)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402


from attention_timing import bench_ms, check, empty_cache  # noqa: E402

from batchllm.attention.triton.paged import paged_attention_triton  # noqa: E402
from batchllm.attention.triton.shared_prefix import shared_prefix_attention_triton  # noqa: E402
from batchllm.attention.triton.shared_prefix_plan import SharedPrefixConfig, shared_prefix_config  # noqa: E402
from tests.attention.shared_prefix_workload import PrefixNode, SeqSpec, _chain, make_shared_batch  # noqa: E402

HQ, HKV, D, PAGE = 32, 8, 128, 16
DTYPE = torch.bfloat16


def cases(scale: int) -> dict[str, tuple[list[PrefixNode], list[SeqSpec]]]:
    """Batches of the engine's prefill-heavy iterations; `scale` divides every length (smoke runs)."""
    prefix, own = max(PAGE, 2000 // scale // PAGE * PAGE), 200 // scale
    members = [PrefixNode(-1, prefix) for _ in range(2)]
    member_seqs = [SeqSpec(g, own, own) for g in range(2) for _ in range(16)]
    decode_nodes = [PrefixNode(-1, prefix) for _ in range(max(1, 32 // scale))]
    decode_seqs = [SeqSpec(2 + g, own + 50 // scale, 1) for g in range(len(decode_nodes)) for _ in range(16)]
    system, doc = max(PAGE, 512 // scale // PAGE * PAGE), max(PAGE, 1536 // scale // PAGE * PAGE)
    ml_nodes = [PrefixNode(-1, system)] + [PrefixNode(0, doc) for _ in range(4)]
    ml_seqs = [SeqSpec(1 + d, 100 // scale, 100 // scale) for d in range(4) for _ in range(8)]
    long = 2000 // scale
    return {
        "micro-members": (members, member_seqs),
        "micro-mixed": (members + decode_nodes, decode_seqs + member_seqs),
        "prefix-prefill": ([], [SeqSpec(-1, long, long) for _ in range(4)]),
        "multilevel": (ml_nodes, ml_seqs),
    }


def context_len(seq: SeqSpec, nodes: list[PrefixNode]) -> int:
    return seq.distinct_len + sum(nodes[n].num_tokens for n in _chain(nodes, seq.node))


def attention_flops(seqs: list[SeqSpec], nodes: list[PrefixNode]) -> float:
    total = 0.0
    for s in seqs:
        ctx = context_len(s, nodes)
        # query i (0-based among the last q_len) sees ctx - q_len + i + 1 keys
        total += s.q_len * (ctx - s.q_len) + s.q_len * (s.q_len + 1) / 2
    return 4.0 * HQ * D * total


def sdpa_yardstick(seqs: list[SeqSpec], nodes: list[PrefixNode], device: str):
    """Dense SDPA over the prefill sequences' shapes (no mask, expanded KV heads): same order of FLOPs."""
    prefill = [s for s in seqs if s.q_len > 1]
    q_len = prefill[0].q_len
    ctx = context_len(prefill[0], nodes)
    q = torch.randn(len(prefill), HQ, q_len, D, dtype=DTYPE, device=device)
    k = torch.randn(len(prefill), HQ, ctx, D, dtype=DTYPE, device=device)
    v = torch.randn_like(k)
    flops = 4.0 * HQ * D * len(prefill) * q_len * ctx
    return (lambda: F.scaled_dot_product_attention(q, k, v)), flops


def sweep_configs() -> list[SharedPrefixConfig]:
    """Candidates for prefill-heavy launches; the default comes first."""
    return [
        shared_prefix_config(HQ, HKV, D, DTYPE),
        SharedPrefixConfig(128, 64, 64, 128, 64, 8, 2),
        SharedPrefixConfig(128, 64, 64, 128, 64, 8, 3),
        SharedPrefixConfig(128, 64, 64, 128, 64, 8, 2, 0),
        SharedPrefixConfig(128, 128, 64, 128, 64, 8, 2),
        SharedPrefixConfig(128, 64, 64, 64, 64, 8, 3),
        SharedPrefixConfig(64, 64, 64, 128, 64, 8, 2),
        SharedPrefixConfig(64, 64, 64, 64, 64, 4, 3),
    ]


def bench_case(name: str, nodes, seqs, device: str, sweep: bool) -> dict:
    b = make_shared_batch(nodes, seqs, HQ, HKV, D, DTYPE, device=device, seed=3, poison=False, min_members=2)
    args = (b.query, b.k_cache, b.v_cache, b.meta, b.scale)
    out = torch.empty_like(b.query)
    unfused = paged_attention_triton(*args)
    flops = attention_flops(seqs, nodes)
    row = dict(case=name, query_tokens=int(b.query.shape[0]), tflop=flops / 1e12)
    row["unfused_ms"] = bench_ms(device, lambda: paged_attention_triton(*args, out=out))
    timings = []
    for cfg in sweep_configs() if sweep else sweep_configs()[:1]:
        try:
            check(f"{name} fused {cfg}", shared_prefix_attention_triton(*args, config=cfg), unfused)
            timings.append((bench_ms(device, lambda: shared_prefix_attention_triton(*args, out=out, config=cfg)), cfg))
        except Exception as exc:  # e.g. out of shared memory for this config
            print(f"  skip {cfg}: {type(exc).__name__}: {str(exc)[:100]}")
    row["fused_ms"] = timings[0][0]
    best_ms, best_cfg = min(timings, key=lambda t: t[0])
    row["best_ms"], row["best_config"] = best_ms, asdict(best_cfg)
    for ms, cfg in timings:
        print(f"  {name}: {ms:.3f} ms  {flops / ms / 1e9:.0f} TFLOP/s  {cfg}")
    if any(s.q_len > 1 for s in seqs):
        fn, sdpa_flops = sdpa_yardstick(seqs, nodes, device)
        ms = bench_ms(device, fn)
        row["sdpa_tflops"] = sdpa_flops / ms / 1e9
    del b, args, out, unfused
    empty_cache(device)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-sweep", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="CPU interpreter, tiny shapes: tests the script only")
    args = parser.parse_args()
    device = "cpu" if args.smoke else "cuda"
    scale = 50 if args.smoke else 1
    rows = [bench_case(name, nodes, seqs, device, not args.no_sweep and not args.smoke)
            for name, (nodes, seqs) in cases(scale).items()]  # fmt: skip
    if os.environ.get("OUT"):
        with open(os.path.join(os.environ["OUT"], "bench_prefill_attention.json"), "w") as f:
            json.dump(rows, f, indent=1)
    print(f"\n{'case':16s} {'q tok':>6s} {'unfused ms':>10s} {'fused ms':>9s} {'best ms':>8s} "
          f"{'fused TF/s':>10s} {'best TF/s':>9s} {'sdpa TF/s':>9s}  best config")  # fmt: skip
    for r in rows:
        tf = r["tflop"] * 1e3
        print(f"{r['case']:16s} {r['query_tokens']:6d} {r['unfused_ms']:10.3f} {r['fused_ms']:9.3f} {r['best_ms']:8.3f} "
              f"{tf / r['fused_ms']:10.0f} {tf / r['best_ms']:9.0f} {r.get('sdpa_tflops', float('nan')):9.0f}  "
              f"{tuple(r['best_config'].values())}")  # fmt: skip


if __name__ == "__main__":
    main()
