"""Compile the attention kernels for a GPU target without a GPU (catches GPU-only errors on CPU).

The Triton interpreter accepts code the compiler rejects (e.g. non-constexpr globals) and cannot
show whether loads are software-pipelined, so this compiles each launch configuration the host
code picks (paged kernels and the prefix-shared fused kernel), for sm_90 by default, and reports
shared memory, cp.async copies, the MMA kind and, for the fused kernel, registers and spills.
Must run without TRITON_INTERPRET=1 (then kernels are JIT functions):

    python -m batchllm.attention.triton.compile_check [--arch 90] [--quick] [--kernels paged|shared|all]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import subprocess
import tempfile
from dataclasses import asdict, dataclass

import torch

from batchllm.attention.triton import paged as tp
from batchllm.attention.triton import shared_prefix_kernels as spk
from batchllm.attention.triton import shared_prefix_plan as spp
from batchllm.attention.triton.utils import KV_FP8_DOTS, KV_FP8_QK, KV_NATIVE, KV_WIDEN, dot_precision, next_pow2

_TORCH_TO_TT = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}
# Argument names by type, shared by every kernel checked: other *_ptr arguments are int32 metadata arrays.
_DATA_PTRS = ("q_ptr", "k_cache", "v_cache", "out_ptr")
_CACHE_PTRS = ("k_cache", "v_cache")  # typed fp8e4nv for an FP8 KV cache
_KV_TAG = {KV_NATIVE: "", KV_WIDEN: "fp8kv-", KV_FP8_DOTS: "fp8dots-", KV_FP8_QK: "fp8qk-"}  # in the configs' names
_FP32_PTRS = ("part_out_ptr", "part_lse_ptr", "k_scale_ptr", "v_scale_ptr")
_SCALARS_FP32 = ("qk_scale",)
# Scalars a real launch of the paged kernels never sees divisible by 16 (so no divisibility hint is given).
_NOT_DIVISIBLE = ("seq_begin", "seq_end", "qk_scale", "stride_bt")
# The same for the prefix-shared kernels.
_SHARED_NOT_DIVISIBLE = (
    "num_segments", "splits", "n_shared", "n_decode", "num_decodes", "num_seqs", "pid_base", "distinct_slot", "qk_scale",
    "stride_bt", "stride_sbt", "stride_lt", "num_heads", "num_parts",
)  # fmt: skip


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
        if name in _CACHE_PTRS and constexprs.get("KV_FP8"):
            sig[name] = "*fp8e4nv"
        elif name in _DATA_PTRS:
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


def _shipped_shapes(quick: bool) -> list[tuple[torch.dtype, int, int, int, str]]:
    """(dtype, Hq, Hkv, D, name tag) of the models we ship; quick: Llama-8B heads, bf16 and fp32 only."""
    dtypes = (torch.bfloat16, torch.float32) if quick else (torch.bfloat16, torch.float16, torch.float32)
    shapes = ((32, 8, 128),) if quick else ((32, 8, 128), (16, 4, 64), (28, 4, 128))
    return [(dtype, hq, hkv, d, f"{_TORCH_TO_TT[dtype]}-h{hq}/{hkv}-d{d}") for dtype in dtypes for hq, hkv, d in shapes]


def paged_configs(quick: bool = False) -> list[tuple[str, torch.dtype, int, int, int, tp.TileConfig, bool, int, bool]]:
    """(name, dtype, Hq, Hkv, D, config, is_decode, num_splits, kv_fp8) for the shapes we ship; the
    16-bit ones also with an FP8 KV cache."""
    out = []
    for dtype, hq, hkv, d, tag in _shipped_shapes(quick):
        dcfg = tp.decode_config(hq, hkv, d, dtype)
        pcfg = tp.prefill_config(hq, hkv, d, dtype)
        for fp8 in (KV_NATIVE, KV_WIDEN, KV_FP8_DOTS, KV_FP8_QK) if dtype != torch.float32 else (KV_NATIVE,):
            kv = _KV_TAG[fp8]
            out.append((f"decode-{kv}{tag}", dtype, hq, hkv, d, dcfg, True, 1, fp8))
            out.append((f"decode-split8-{kv}{tag}", dtype, hq, hkv, d, dcfg, True, 8, fp8))
            out.append((f"prefill-{kv}{tag}", dtype, hq, hkv, d, pcfg, False, 1, fp8))
    return out


def compile_paged(arch: int = 90, quick: bool = False) -> list[CompileReport]:
    reports = []
    for name, dtype, hq, hkv, d, cfg, is_decode, splits, fp8 in paged_configs(quick):
        ce = dict(
            G=hq // hkv, BLOCK_M=cfg.block_m, BLOCK_Q=cfg.block_q, BLOCK_N=cfg.block_n, PAGE=16,
            HEAD_DIM=d, D_PAD=max(16, next_pow2(d)), NUM_SPLITS=splits, IS_DECODE=is_decode, KV_FP8=fp8,
            UPCAST=False, PRECISION=dot_precision(dtype), INTERPRET=False,
        )  # fmt: skip
        reports.append(
            compile_kernel(tp._paged_attn_kernel, name, _TORCH_TO_TT[dtype], ce, cfg.num_warps, cfg.num_stages, arch)
        )
    merge_ce = dict(NUM_SPLITS=8, S_PAD=8, HEAD_DIM=128, D_PAD=128)
    reports.append(compile_kernel(tp._merge_splits_kernel, "merge-splits8-d128", "fp32", merge_ce, 4, 1, arch))
    return reports


def _compile_shared(
    kernel, name: str, dtype: str, constexprs: dict, num_warps: int, num_stages: int, arch: int, maxnreg: int = 0
) -> CompileReport:
    return compile_kernel(kernel, name, dtype, constexprs, num_warps, num_stages, arch,
                          not_divisible=_SHARED_NOT_DIVISIBLE, maxnreg=maxnreg, registers=True)  # fmt: skip


def shared_prefix_configs(quick: bool = False) -> list[tuple[str, torch.dtype, dict, int, int, int]]:
    """(name, dtype, constexprs, num_warps, num_stages, maxnreg) for the configurations the host code picks."""
    out = []
    for dtype, hq, hkv, d, tag in _shipped_shapes(quick):
        g = hq // hkv
        cfg = spp.shared_prefix_config(hq, hkv, d, dtype)
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
                    HAS_SHARED=has[0], HAS_DECODE=has[1], HAS_EXTEND=has[2], KV_FP8=KV_NATIVE,
                    UPCAST=False, PRECISION=dot_precision(dtype), INTERPRET=False,
                )  # fmt: skip
                out.append((f"{kind}-m{s_block_m}-{tag}", dtype, ce, warps, cfg.num_stages, spp.maxnreg_for(cfg, warps)))
        fp8 = spp.shared_prefix_config(hq, hkv, d, dtype, kv_fp8=True)
        if fp8 != cfg:  # decode launches over an FP8 cache: their own tiles, both tile heights
            warps = fp8.num_warps or 4
            fp8_e_block_m = max(fp8.extend_block_m, next_pow2(g))
            tiles = [(m, False) for m in sorted({max(16, next_pow2(g)), fp8.shared_block_m})] + [
                (fp8.shared_block_m, True)
            ]
            for mode, (s_block_m, extend) in itertools.product((KV_WIDEN, KV_FP8_DOTS, KV_FP8_QK), tiles):
                fce = dict(ce, S_BLOCK_M=s_block_m, S_BLOCK_Q=s_block_m // g, S_BLOCK_N=fp8.shared_block_n,
                           D_BLOCK_N=fp8.decode_block_n, E_BLOCK_M=fp8_e_block_m, E_BLOCK_Q=fp8_e_block_m // g,
                           E_BLOCK_N=fp8.extend_block_n, HAS_SHARED=True, HAS_DECODE=True, HAS_EXTEND=extend,
                           KV_FP8=mode)  # fmt: skip
                kind = "fused-mixed" if extend else "fused-decode"
                out.append((f"{kind}-m{s_block_m}-{_KV_TAG[mode]}{tag}", dtype, fce, warps, fp8.num_stages,
                            spp.maxnreg_for(fp8, warps)))  # fmt: skip
        ce = dict(ce, HAS_SHARED=False, HAS_DECODE=True, HAS_EXTEND=False)
        warps = cfg.num_warps or 4
        out.append((f"cascade-distinct-{tag}", dtype, ce, warps, cfg.num_stages, spp.maxnreg_for(cfg, warps)))
        pre = spp.shared_prefix_config(hq, hkv, d, dtype, prefill_heavy=True)
        if pre != cfg:  # prefill-heavy launches: shared + extend tiles, with or without leading decodes
            e_block_m = max(pre.extend_block_m, next_pow2(g))
            ce = dict(
                ce, S_BLOCK_M=pre.shared_block_m, S_BLOCK_Q=pre.shared_block_m // g, S_BLOCK_N=pre.shared_block_n,
                D_BLOCK_N=pre.decode_block_n, E_BLOCK_M=e_block_m, E_BLOCK_Q=e_block_m // g,
                E_BLOCK_N=pre.extend_block_n, HAS_SHARED=True, HAS_DECODE=True, HAS_EXTEND=True,
            )  # fmt: skip
            warps = pre.num_warps or 8
            out.append((f"fused-prefill-m{pre.shared_block_m}-{tag}", dtype, ce, warps, pre.num_stages,
                        spp.maxnreg_for(pre, warps)))  # fmt: skip
    return out


def compile_shared_prefix(arch: int = 90, quick: bool = False) -> list[CompileReport]:
    reports = []
    for name, dtype, ce, warps, stages, maxnreg in shared_prefix_configs(quick):
        reports.append(
            _compile_shared(spk._shared_prefix_kernel, name, _TORCH_TO_TT[dtype], ce, warps, stages, arch, maxnreg)
        )
    merge_ce = dict(H_BLOCK=32, HEAD_DIM=128, D_PAD=128, INTERPRET=False)
    reports.append(_compile_shared(spk._merge_kernel, "merge-h32-d128", "bf16", merge_ce, 4, 1, arch))
    return reports


KERNELS = ("paged", "shared")


def compile_all(arch: int = 90, quick: bool = False, kernels: tuple[str, ...] = KERNELS) -> list[CompileReport]:
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        raise RuntimeError("unset TRITON_INTERPRET: the interpreter has no compiler to check")
    reports = []
    if "paged" in kernels:
        reports += compile_paged(arch, quick)
    if "shared" in kernels:
        reports += compile_shared_prefix(arch, quick)
    return reports


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90)
    parser.add_argument("--quick", action="store_true", help="Llama-8B heads, bf16 and fp32 only")
    parser.add_argument("--kernels", choices=("paged", "shared", "all"), default="all")
    args = parser.parse_args()
    reports = compile_all(args.arch, args.quick, KERNELS if args.kernels == "all" else (args.kernels,))
    for r in reports:
        print(f"{r.name:40s} smem {r.shared_bytes:6d}  cp.async {r.async_copies:2d}  wgmma {r.wgmma}  mma {r.mma}  "
              f"warps {r.num_warps}  regs {r.registers}  spills {r.spill_bytes}")  # fmt: skip
    print(json.dumps([asdict(r) for r in reports]))


if __name__ == "__main__":
    main()
