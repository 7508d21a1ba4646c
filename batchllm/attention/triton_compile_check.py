"""Compile the paged-attention kernels for a GPU target without a GPU (catches GPU-only errors on CPU).

The Triton interpreter accepts code the compiler rejects (e.g. non-constexpr globals) and cannot
show whether loads are software-pipelined, so this compiles each launch configuration the host
code picks, for sm_90 by default, and reports shared memory, cp.async copies and the MMA kind.
Must run without TRITON_INTERPRET=1 (then kernels are JIT functions):

    python -m batchllm.attention.triton_compile_check [--arch 90]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import tempfile
from dataclasses import asdict, dataclass

import torch

from batchllm.attention import triton_paged as tp

_TORCH_TO_TT = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}
# Argument names by type, shared by every kernel checked: other *_ptr arguments are int32 metadata arrays.
_DATA_PTRS = ("q_ptr", "k_cache", "v_cache", "out_ptr")
_FP32_PTRS = ("part_out_ptr", "part_lse_ptr")
_SCALARS_FP32 = ("qk_scale",)
# Scalars a real launch of the paged kernels never sees divisible by 16 (so no divisibility hint is given).
_NOT_DIVISIBLE = ("seq_begin", "seq_end", "qk_scale", "stride_bt")


@dataclass
class CompileReport:
    name: str
    shared_bytes: int
    async_copies: int
    wgmma: int
    mma: int
    num_warps: int = 0
    registers: int = -1  # per thread, from ptxas -v (-1: not asked for, or unknown)
    spill_bytes: int = -1  # spill stores + loads


def _signature(kernel, dtype: str, constexprs: dict, not_divisible: tuple[str, ...]) -> tuple[dict, dict]:
    sig, attrs = {}, {}
    for i, name in enumerate(kernel.arg_names):
        if name in constexprs:
            sig[name] = "constexpr"
            continue
        if name in _DATA_PTRS:
            sig[name] = f"*{dtype}"
        elif name in _FP32_PTRS:
            sig[name] = "*fp32"
        elif name.endswith("_ptr"):
            sig[name] = "*i32"
        elif name in _SCALARS_FP32:
            sig[name] = "fp32"
        else:
            sig[name] = "i32"
        if name not in not_divisible:  # what the JIT infers for 16-aligned pointers and strides
            attrs[(i,)] = [["tt.divisibility", 16]]
    return sig, attrs


def _ptxas_usage(ptx: str, arch: int) -> tuple[int, int]:
    """(registers, spill bytes) that ptxas reports for the kernel; (-1, -1) without ptxas."""
    try:
        from triton.backends.nvidia.compiler import get_ptxas

        tool = get_ptxas(arch)
        ptxas = getattr(tool, "path", tool)
        with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
            f.write(ptx)
        proc = subprocess.run([ptxas, "-v", f"-arch=sm_{arch}a", f.name, "-o", os.devnull], capture_output=True, text=True)
        os.unlink(f.name)
        regs = re.search(r"Used (\d+) registers", proc.stderr)
        spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", proc.stderr)
        if regs is None or spills is None:
            return -1, -1
        return int(regs.group(1)), int(spills.group(1)) + int(spills.group(2))
    except Exception:  # diagnostics only
        return -1, -1


def compile_kernel(
    kernel, name: str, dtype: str, constexprs: dict, num_warps: int, num_stages: int, arch: int, *,
    not_divisible: tuple[str, ...] = _NOT_DIVISIBLE, maxnreg: int = 0, registers: bool = False,
) -> CompileReport:  # fmt: skip
    """Compile one launch configuration for `arch` offline; `registers` also asks ptxas for register use."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    sig, attrs = _signature(kernel, dtype, constexprs, not_divisible)
    compiled = triton.compile(
        ASTSource(kernel, sig, constexprs, attrs),
        target=GPUTarget("cuda", arch, 32),
        options=dict(num_warps=num_warps, num_stages=num_stages, maxnreg=maxnreg or None),
    )
    ttgir = compiled.asm["ttgir"]
    regs, spills = _ptxas_usage(compiled.asm["ptx"], arch) if registers else (-1, -1)
    return CompileReport(
        name=name,
        shared_bytes=int(compiled.metadata.shared),
        async_copies=ttgir.count("async_copy_global_to_local"),
        wgmma=ttgir.count("warp_group_dot"),
        mma=ttgir.count("tt.dot"),
        num_warps=num_warps,
        registers=regs,
        spill_bytes=spills,
    )


def attention_configs(quick: bool = False) -> list[tuple[str, torch.dtype, int, int, int, tp.TileConfig, bool, int]]:
    """(name, dtype, Hq, Hkv, D, config, is_decode, num_splits) for the shapes we ship."""
    out = []
    dtypes = (torch.bfloat16, torch.float32) if quick else (torch.bfloat16, torch.float16, torch.float32)
    shapes = ((32, 8, 128),) if quick else ((32, 8, 128), (16, 4, 64), (28, 4, 128))
    for dtype in dtypes:
        for hq, hkv, d in shapes:
            tag = f"{_TORCH_TO_TT[dtype]}-h{hq}/{hkv}-d{d}"
            dcfg = tp.decode_config(hq, hkv, d, dtype)
            pcfg = tp.prefill_config(hq, hkv, d, dtype)
            out.append((f"decode-{tag}", dtype, hq, hkv, d, dcfg, True, 1))
            out.append((f"decode-split8-{tag}", dtype, hq, hkv, d, dcfg, True, 8))
            out.append((f"prefill-{tag}", dtype, hq, hkv, d, pcfg, False, 1))
    return out


def compile_all(arch: int = 90, quick: bool = False) -> list[CompileReport]:
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        raise RuntimeError("unset TRITON_INTERPRET: the interpreter has no compiler to check")
    reports = []
    for name, dtype, hq, hkv, d, cfg, is_decode, splits in attention_configs(quick):
        ce = dict(
            G=hq // hkv, BLOCK_M=cfg.block_m, BLOCK_Q=cfg.block_q, BLOCK_N=cfg.block_n, PAGE=16,
            HEAD_DIM=d, D_PAD=max(16, tp.next_pow2(d)), NUM_SPLITS=splits, IS_DECODE=is_decode,
            UPCAST=False, PRECISION=tp.dot_precision(dtype), INTERPRET=False,
        )  # fmt: skip
        reports.append(
            compile_kernel(tp._paged_attn_kernel, name, _TORCH_TO_TT[dtype], ce, cfg.num_warps, cfg.num_stages, arch)
        )
    merge_ce = dict(NUM_SPLITS=8, S_PAD=8, HEAD_DIM=128, D_PAD=128)
    reports.append(compile_kernel(tp._merge_splits_kernel, "merge-splits8-d128", "fp32", merge_ce, 4, 1, arch))
    return reports


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90)
    parser.add_argument("--quick", action="store_true", help="Llama-8B heads, bf16 and fp32 only")
    args = parser.parse_args()
    reports = compile_all(args.arch, args.quick)
    for r in reports:
        print(f"{r.name:32s} smem {r.shared_bytes:6d}  cp.async {r.async_copies:2d}  wgmma {r.wgmma}  mma {r.mma}")
    print(json.dumps([asdict(r) for r in reports]))


if __name__ == "__main__":
    main()
