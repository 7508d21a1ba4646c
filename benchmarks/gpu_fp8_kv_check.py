"""GPU check of the FP8 KV cache (issue 19): kernels vs the PyTorch reference at Llama-8B sizes, then the
engine on llama-3.1-8b dummy weights with a bf16 and an FP8 KV cache, decode-heavy and micro workloads.

Usage: python benchmarks/gpu_fp8_kv_check.py OUT_DIR [--decode-requests 256] [--micro-requests 1024] [--parts kernels,engine]
Prints a short table last; writes OUT_DIR/gpu_fp8_kv_check.json. Each part runs in its own try/except, and
a part that would start after --budget-s seconds is skipped, so one failure or a slow start loses nothing else.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import time
import traceback

import bench_setup  # noqa: E402,F401  (first: repo on sys.path)
import torch  # noqa: E402

from batchllm import LLM, SamplingParams  # noqa: E402
from batchllm.attention.reference import paged_attention_reference  # noqa: E402
from batchllm.attention.triton.paged import paged_attention_triton  # noqa: E402
from batchllm.attention.triton.shared_prefix import shared_prefix_attention_triton  # noqa: E402
from batchllm.bench.kernel_timing import ms_per_call  # noqa: E402
from batchllm.bench.workloads import make_workload  # noqa: E402
from tests.attention.shared_prefix_workload import (  # noqa: E402
    SeqSpec,
    SharedBatch,
    make_shared_batch,
    uniform_groups,
    with_fp8_caches,
)

HERE = os.path.dirname(os.path.abspath(__file__))
MODEL = os.path.join(HERE, "models", "llama-3.1-8b")
HEADS, HEAD_DIM = (32, 8), 128  # Llama-3.1-8B
DEVICE = torch.device("cuda")


def _fp8(b: SharedBatch, seed: int) -> SharedBatch:
    """The batch with its caches in e4m3, per-head scales in [0.5, 2] (K and V different)."""
    g = torch.Generator().manual_seed(seed)
    k_scale, v_scale = (0.5 + 1.5 * torch.rand(HEADS[1], generator=g) for _ in range(2))
    return with_fp8_caches(b, k_scale, v_scale)


def _kernel_cases():
    """(name, batch, run): the FP8-reading launches at Llama-8B head shapes, block size 16."""
    bf16, block = torch.bfloat16, 16

    def plain(specs, seed):
        b = make_shared_batch([], [SeqSpec(-1, s, q) for q, s in specs], *HEADS, HEAD_DIM, bf16, DEVICE, block,
                              seed=seed, poison=False)  # fmt: skip
        b.meta.shared = None
        return b

    def shared(nodes_seqs, seed):
        return make_shared_batch(*nodes_seqs, *HEADS, HEAD_DIM, bf16, DEVICE, block, seed=seed, poison=False)

    paged = lambda b, **kw: paged_attention_triton(b.query, b.k_cache, b.v_cache, b.meta, b.scale, **kw)  # noqa: E731
    fused = lambda b, **kw: shared_prefix_attention_triton(b.query, b.k_cache, b.v_cache, b.meta, b.scale, **kw)  # noqa: E731
    return [
        ("paged decode 256 x 2048", plain([(1, 2048)] * 256, 1), paged),
        ("paged decode split-K 8 x 4000", plain([(1, 4000)] * 8, 2), paged),
        ("paged prefill 4 x 1024", plain([(1024, 1024)] * 4, 3), paged),
        ("paged mixed 32 dec + 2 x 512", plain([(1, 1500)] * 32 + [(512, 1800)] * 2, 4), paged),
        ("shared decode 8 groups x 16, 2048+200", shared(uniform_groups(8, 16, 2048, 200, 1), 5), fused),
        ("shared prefill 2 x 16, 2000+200", shared(uniform_groups(2, 16, 2000, 200, 200), 6), fused),
        ("shared cascade 8 x 16, 2048+200", shared(uniform_groups(8, 16, 2048, 200, 1), 7),
         lambda b: fused(b, cascade=True)),
    ]


def kernels() -> list[dict]:
    rows = []
    for i, (name, b, run) in enumerate(_kernel_cases()):
        row = {"case": name}
        try:
            q8 = _fp8(b, seed=i)
            out8 = run(q8)
            ref8 = paged_attention_reference(q8.query.float(), q8.k_cache, q8.v_cache, q8.meta, q8.scale)
            out16 = run(b)
            row["max_abs_err_vs_reference"] = float((out8.float() - ref8).abs().max())
            row["max_abs_diff_vs_bf16_cache"] = float((out8.float() - out16.float()).abs().max())
            row["ms_bf16_cache"], row["ms_fp8_cache"] = ms_per_call(lambda: run(b)), ms_per_call(lambda: run(q8))
        except Exception as err:  # one failing case must not hide the others
            row["error"] = f"{type(err).__name__}: {err}"
            traceback.print_exc()
        rows.append(row)
        print(json.dumps(row), flush=True)
        del b
        torch.cuda.empty_cache()
    return rows


def engine_runs(kv_cache_dtype: str, workloads: list) -> list[dict]:
    """One engine (dummy weights) with this KV cache, each workload timed after a warm-up."""
    start = time.perf_counter()
    llm = LLM(MODEL, load_format="dummy", dtype="bfloat16", device="cuda", skip_tokenizer_init=True,
              max_model_len=4096, kv_cache_dtype=kv_cache_dtype)  # fmt: skip
    load_s = time.perf_counter() - start
    warm = make_workload("noshare", 8, 128256, seed=1)
    llm.generate([{"prompt_token_ids": p[:256]} for p in warm.prompts], SamplingParams(max_tokens=4, ignore_eos=True),
                 use_tqdm=False)  # fmt: skip
    rows = []
    for workload in workloads:
        row = {"kv_cache_dtype": kv_cache_dtype, "workload": workload.name, "requests": len(workload.prompts),
               "kv_blocks": llm.num_kv_blocks, "load_s": load_s}  # fmt: skip
        try:
            params = [SamplingParams(temperature=0, max_tokens=m, ignore_eos=True) for m in workload.max_tokens]
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            outs = llm.generate([{"prompt_token_ids": p} for p in workload.prompts], params, use_tqdm=False)
            torch.cuda.synchronize()
            seconds = time.perf_counter() - t0
            produced = sum(len(o.outputs[0].token_ids) for o in outs)
            row.update(seconds=seconds, output_tokens=produced, output_tok_s=produced / seconds,
                       total_tok_s=(produced + workload.prompt_tokens) / seconds,
                       preemptions=llm.engine.scheduler.counters.preemptions)  # fmt: skip
        except Exception as err:
            row["error"] = f"{type(err).__name__}: {err}"
            traceback.print_exc()
        rows.append(row)
        print(json.dumps(row), flush=True)
    del llm
    gc.collect()
    torch.cuda.empty_cache()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", default=os.environ.get("OUT", "."))
    parser.add_argument("--decode-requests", type=int, default=256, help="micro-100-400-1-2000 (decode-heavy)")
    parser.add_argument("--micro-requests", type=int, default=1024, help="micro-2000-200-16-100")
    parser.add_argument("--budget-s", type=float, default=240.0, help="start no engine after this many seconds")
    parser.add_argument("--parts", default="kernels,engine", help="kernels, engine or both (comma-separated)")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    t_start = time.perf_counter()
    results: dict = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "date": time.strftime("%Y-%m-%d")}
    try:
        import triton

        results["triton"] = triton.__version__
        if "kernels" in args.parts:
            results["kernels"] = kernels()
    except Exception as err:
        results["kernels_error"] = f"{type(err).__name__}: {err}"
        traceback.print_exc()
    workloads = [make_workload("micro-100-400-1-2000", args.decode_requests, 128256),
                 make_workload("micro-2000-200-16-100", args.micro_requests, 128256)]  # fmt: skip
    results["engine"] = []
    for kv in ("auto", "fp8") if "engine" in args.parts else ():
        if time.perf_counter() - t_start > args.budget_s:
            results["engine"].append({"kv_cache_dtype": kv, "error": f"skipped: past --budget-s {args.budget_s}"})
            continue
        try:
            results["engine"] += engine_runs(kv, workloads)
        except Exception as err:
            results["engine"].append({"kv_cache_dtype": kv, "error": f"{type(err).__name__}: {err}"})
            traceback.print_exc()
    results["wall_s"] = time.perf_counter() - t_start
    with open(os.path.join(args.out, "gpu_fp8_kv_check.json"), "w") as f:
        json.dump(results, f, indent=2)

    print(f"\ndevice: {results['device']}  torch {results['torch']}  triton {results.get('triton')}")
    _print_rows(f"{'kernel case (Hq 32, Hkv 8, D 128)':<40} {'err vs ref':>10} {'vs bf16':>8} {'ms bf16':>8} {'ms fp8':>7}",
                results.get("kernels", []), lambda r: f"{r['case']:<40}",
                lambda r: f"{r['case']:<40} {r['max_abs_err_vs_reference']:>10.2e} "
                f"{r['max_abs_diff_vs_bf16_cache']:>8.3f} {r['ms_bf16_cache']:>8.3f} {r['ms_fp8_cache']:>7.3f}")
    _print_rows(f"{'engine (llama-3.1-8b dummy)':<34} {'kv':>5} {'blocks':>7} {'seconds':>8} {'out tok/s':>10} {'tot tok/s':>10}",
                results["engine"], lambda r: f"{r.get('workload', '-'):<34} {r['kv_cache_dtype']:>5}",
                lambda r: f"{r['workload'] + ' x' + str(r['requests']):<34} {r['kv_cache_dtype']:>5} {r['kv_blocks']:>7} "
                f"{r['seconds']:>8.2f} {r['output_tok_s']:>10.0f} {r['total_tok_s']:>10.0f}")  # fmt: skip
    print(f"wall {results['wall_s']:.0f} s; JSON: {os.path.join(args.out, 'gpu_fp8_kv_check.json')}")


def _print_rows(header: str, rows: list, label, line) -> None:
    """The header, then one line per row: `line(row)`, or `label(row)` and the error for a row that failed."""
    print(header)
    for r in rows:
        print(f"{label(r)} ERROR {r['error'][:80]}" if "error" in r else line(r))


if __name__ == "__main__":
    main()
