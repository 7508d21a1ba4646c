"""Compile the prefix-shared attention kernels for a GPU target without a GPU (sm_90 by default).

Same purpose as triton_compile_check.py (the interpreter accepts code the compiler rejects and hides
pipelining / MMA kinds), for the launch configurations `shared_prefix_attention_triton` picks.
Must run without TRITON_INTERPRET=1:

    python -m batchllm.attention.shared_prefix_compile_check [--arch 90] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import asdict

import torch

from batchllm.attention import triton_shared_prefix as tsp
from batchllm.attention.triton_compile_check import _TORCH_TO_TT, CompileReport, compile_kernel
from batchllm.attention.triton_utils import dot_precision, next_pow2

# Scalars a real launch does not see divisible by 16 (no divisibility hint).
_NOT_DIVISIBLE = (
    "num_segments", "splits", "n_shared", "n_decode", "num_decodes", "num_seqs", "pid_base", "distinct_slot", "qk_scale",
    "stride_bt", "stride_sbt", "stride_lt", "num_heads", "num_parts",
)  # fmt: skip


def _compile(
    kernel, name: str, dtype: str, constexprs: dict, num_warps: int, num_stages: int, arch: int, maxnreg: int = 0
) -> CompileReport:
    return compile_kernel(kernel, name, dtype, constexprs, num_warps, num_stages, arch,
                          not_divisible=_NOT_DIVISIBLE, maxnreg=maxnreg, registers=True)  # fmt: skip


def kernel_configs(quick: bool = False) -> list[tuple[str, torch.dtype, dict, int, int, int]]:
    """(name, dtype, constexprs, num_warps, num_stages, maxnreg) for the configurations the host code picks."""
    out = []
    dtypes = (torch.bfloat16, torch.float32) if quick else (torch.bfloat16, torch.float16, torch.float32)
    shapes = ((32, 8, 128),) if quick else ((32, 8, 128), (16, 4, 64), (28, 4, 128))
    for dtype in dtypes:
        for hq, hkv, d in shapes:
            g = hq // hkv
            cfg = tsp.shared_prefix_config(hq, hkv, d, dtype)
            tag = f"{_TORCH_TO_TT[dtype]}-h{hq}/{hkv}-d{d}"
            e_block_m = max(cfg.extend_block_m, next_pow2(g))
            for s_block_m in sorted({max(16, next_pow2(g)), 64, cfg.shared_block_m}):
                for kind, has in (
                    ("fused-decode", (True, True, False)),
                    ("fused-mixed", (True, True, True)),
                    ("cascade-shared", (True, False, False)),
                ):
                    if kind != "fused-decode" and s_block_m != cfg.shared_block_m:
                        continue
                    if quick and dtype == torch.float32 and kind != "fused-mixed":
                        continue
                    warps = cfg.num_warps or (8 if max(s_block_m, e_block_m if has[2] else 0) >= 128 else 4)
                    ce = dict(
                        G=g, HKV=hkv, PAGE=16, HEAD_DIM=d, D_PAD=max(16, next_pow2(d)),
                        S_BLOCK_M=s_block_m, S_BLOCK_Q=s_block_m // g, S_BLOCK_N=cfg.shared_block_n,
                        D_BLOCK_M=max(16, next_pow2(g)), D_BLOCK_N=cfg.decode_block_n,
                        E_BLOCK_M=e_block_m, E_BLOCK_Q=e_block_m // g, E_BLOCK_N=cfg.extend_block_n,
                        HAS_SHARED=has[0], HAS_DECODE=has[1], HAS_EXTEND=has[2],
                        UPCAST=False, PRECISION=dot_precision(dtype), INTERPRET=False,
                    )  # fmt: skip
                    out.append((f"{kind}-m{s_block_m}-{tag}", dtype, ce, warps, cfg.num_stages, tsp._maxnreg(cfg, warps)))
            ce = dict(ce, HAS_SHARED=False, HAS_DECODE=True, HAS_EXTEND=False)
            warps = cfg.num_warps or 4
            out.append((f"cascade-distinct-{tag}", dtype, ce, warps, cfg.num_stages, tsp._maxnreg(cfg, warps)))
            pre = tsp.shared_prefix_config(hq, hkv, d, dtype, prefill_heavy=True)
            if pre != cfg:  # prefill-heavy launches: shared + extend tiles, with or without leading decodes
                e_block_m = max(pre.extend_block_m, next_pow2(g))
                ce = dict(
                    ce, S_BLOCK_M=pre.shared_block_m, S_BLOCK_Q=pre.shared_block_m // g, S_BLOCK_N=pre.shared_block_n,
                    D_BLOCK_N=pre.decode_block_n, E_BLOCK_M=e_block_m, E_BLOCK_Q=e_block_m // g,
                    E_BLOCK_N=pre.extend_block_n, HAS_SHARED=True, HAS_DECODE=True, HAS_EXTEND=True,
                )  # fmt: skip
                warps = pre.num_warps or 8
                out.append((f"fused-prefill-m{pre.shared_block_m}-{tag}", dtype, ce, warps, pre.num_stages,
                            tsp._maxnreg(pre, warps)))  # fmt: skip
    return out


def compile_all(arch: int = 90, quick: bool = False) -> list[CompileReport]:
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        raise RuntimeError("unset TRITON_INTERPRET: the interpreter has no compiler to check")
    reports = []
    for name, dtype, ce, warps, stages, maxnreg in kernel_configs(quick):
        reports.append(_compile(tsp._shared_prefix_kernel, name, _TORCH_TO_TT[dtype], ce, warps, stages, arch, maxnreg))
    merge_ce = dict(H_BLOCK=32, HEAD_DIM=128, D_PAD=128, INTERPRET=False)
    reports.append(_compile(tsp._merge_kernel, "merge-h32-d128", "bf16", merge_ce, 4, 1, arch))
    return reports


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90)
    parser.add_argument("--quick", action="store_true", help="Llama-8B heads, bf16 and fp32 only")
    args = parser.parse_args()
    reports = compile_all(args.arch, args.quick)
    for r in reports:
        print(f"{r.name:40s} smem {r.shared_bytes:6d}  cp.async {r.async_copies:2d}  wgmma {r.wgmma}  mma {r.mma}  "
              f"warps {r.num_warps}  regs {r.registers}  spills {r.spill_bytes}")  # fmt: skip
    print(json.dumps([asdict(r) for r in reports]))


if __name__ == "__main__":
    main()
