"""`batchllm bench`: run a workload end to end under one or several configurations; print a table.

    batchllm bench --workload micro-2000-200-16-100 --requests 1024 --model MODEL_DIR --load-format dummy \\
        --compare batchllm,vllm-like,+prefix-clustering,+decode-first,+memory-batching --out results.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def add_parser(subparsers) -> argparse.ArgumentParser:
    from batchllm.config import QUANTIZATIONS

    p = subparsers.add_parser("bench", help="benchmark a workload end to end (tokens/s, reuse, ratios, floor)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--workload", help="micro-S-D-k-O | multilevel | noshare | skewed | realistic")
    source.add_argument("--input", help="a workload JSONL ({prompt_token_ids, max_tokens} per line)")
    p.add_argument("--requests", type=int, default=1024)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", required=True, help="HF model folder (config.json suffices with --load-format dummy)")
    p.add_argument("--load-format", default="auto", choices=["auto", "dummy"])
    p.add_argument("--dtype", default="auto")
    p.add_argument("--device", default="auto")
    p.add_argument("--max-model-len", type=int, default=None)
    p.add_argument("--max-num-batched-tokens", type=int, default=None)
    p.add_argument("--max-num-seqs", type=int, default=256, help="count cap of the vllm-like configurations")
    p.add_argument("--gpu-memory-utilization", type=float, default=0.90)
    p.add_argument("--enforce-eager", action="store_true", help="no CUDA graphs")
    p.add_argument("--quantization", default=None, choices=[q for q in QUANTIZATIONS if q],
                   help="fp8: FP8 linear layers (the floor then counts their FLOPs at the measured FP8 matmul rate)")
    p.add_argument("--compare", default="batchllm", help="comma-separated configurations (first = ratio base)")
    p.add_argument("--hf-requests", type=int, default=0, help="also time transformers generate_batch on N requests")
    p.add_argument("--write-workload", default=None, help="save the generated workload JSONL here")
    p.add_argument("--trace-dir", default=None, help="save each run's per-iteration trace here")
    p.add_argument("--out", default=None, help="write all results as JSON")
    p.add_argument("--peer-results", default=None,
                   help="JSON lines of a peer engine timed on the same workload file in the same lease (as "
                        "run_vllm.py prints them); the line for this workload joins the table")
    p.add_argument("--warmup-requests", type=int, default=0,
                   help="untimed pass over the first N requests per configuration first (-1: the whole workload, "
                        "0: none; the engine compiles its kernel variants at start, so none is needed)")
    return p


def run(args: argparse.Namespace) -> int:
    import torch

    from batchllm.bench.compare import CONFIGS, run_config, run_transformers_baseline
    from batchllm.bench.roofline import measure_device_rates, workload_floor
    from batchllm.bench.workloads import make_workload, read_workload_jsonl
    from batchllm.llm import LLM
    from batchllm.model.arch_config import load_arch_config
    from batchllm.sampling_params import SamplingParams

    configs = [c.strip() for c in args.compare.split(",") if c.strip()]
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        print(f"error: unknown --compare configuration(s) {unknown}; known: {sorted(CONFIGS)}", file=sys.stderr)
        return 2
    arch = load_arch_config(args.model)
    if args.workload:
        workload = make_workload(args.workload, args.requests, arch.vocab_size, args.seed)
        if args.write_workload:
            workload.write_jsonl(args.write_workload)
    else:
        workload = read_workload_jsonl(args.input)
    longest = max(len(p) + m for p, m in zip(workload.prompts, workload.max_tokens))
    llm = LLM(args.model, load_format=args.load_format, dtype=args.dtype, device=args.device,
              skip_tokenizer_init=True, max_model_len=args.max_model_len or max(longest + 1, 4096),
              max_num_batched_tokens=args.max_num_batched_tokens, max_num_seqs=args.max_num_seqs,
              gpu_memory_utilization=args.gpu_memory_utilization, enforce_eager=args.enforce_eager,
              quantization=args.quantization)
    warm = make_workload("noshare", 8, arch.vocab_size, seed=1)
    llm.generate([{"prompt_token_ids": p[:256]} for p in warm.prompts],
                 SamplingParams(max_tokens=4, ignore_eos=True), use_tqdm=False)
    results = []
    warm_subset = None
    if args.warmup_requests:
        n = len(workload.prompts) if args.warmup_requests < 0 else min(args.warmup_requests, len(workload.prompts))
        warm_subset = type(workload)(workload.name + "-warmup", workload.prompts[:n], workload.max_tokens[:n])
    for name in configs:
        if warm_subset is not None:
            run_config(llm, name, warm_subset)
        trace = os.path.join(args.trace_dir, f"trace_{name.strip('+')}.json") if args.trace_dir else None
        result = run_config(llm, name, workload, trace).to_dict()
        results.append(result)
        print(json.dumps(result), flush=True)
    hf = None
    device = llm.config.device
    fp8 = llm.config.quantization == "fp8"  # asked for, or the checkpoint's own
    if args.hf_requests:
        del llm
        if device.type == "cuda":
            torch.cuda.empty_cache()
        hf_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        hf = run_transformers_baseline(args.model, workload, hf_dtype, args.hf_requests, device=str(device))
        print(json.dumps(hf), flush=True)
    peers = _peer_rows(args.peer_results, workload) if args.peer_results else []
    rates = measure_device_rates(device, fp8=fp8)
    floor = workload_floor(workload, arch, rates, block_size=16, fp8_linears=fp8)
    _print_table(workload, results + peers, hf, floor, rates, device)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"workload": workload.name, "requests": len(workload.prompts), "results": results, "peers": peers,
                       "transformers": hf, "floor": floor.__dict__, "rates": rates.__dict__,
                       "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu"}, f, indent=2)
    return 0


def _peer_rows(path: str, workload) -> list[dict]:
    """Rows of a peer's JSON lines whose workload file is this run's and whose token counts match it."""
    rows = []
    names = {workload.name, workload.name + ".jsonl"}  # a file's workload is named after it
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line.startswith("{"):
                continue
            rec = json.loads(line)
            if rec.get("workload") not in names or "seconds" not in rec:
                continue
            if (rec["prompt_tokens"], rec["output_tokens"]) != (workload.prompt_tokens, workload.output_tokens):
                print(f"warning: peer line for {rec['workload']} has other token counts; left out", file=sys.stderr)
                continue
            rows.append({"config": rec.get("peer", "peer"), "workload": rec["workload"], "requests": rec["requests"],
                         "seconds": rec["seconds"], "prompt_tokens": rec["prompt_tokens"],
                         "output_tokens": rec["output_tokens"],
                         "total_tokens_per_s": (rec["prompt_tokens"] + rec["output_tokens"]) / rec["seconds"]})
    return rows


def _print_table(workload, results, hf, floor, rates, device) -> None:
    base = results[0]
    print(f"\n{workload.name}: {len(workload.prompts)} requests, {workload.prompt_tokens} prompt + "
          f"{workload.output_tokens} output tokens; device {device}")
    print(f"{'config':<22}{'seconds':>9}{'req/s':>8}{'tok/s':>10}{'out tok/s':>10}{'vs ' + base['config'][:10]:>14}"
          f"{'reuse':>7}{'iters':>7}{'tok/it':>8}{'peakKV':>8}{'preempt':>8}{'% floor':>8}{'jit':>5}")
    rows = results + ([hf] if hf else [])
    for r in rows:
        ratio = r["total_tokens_per_s"] / base["total_tokens_per_s"]
        pct = floor.seconds / r["seconds"] * 100 if r in results else float("nan")
        print(f"{r['config'][:22]:<22}{r['seconds']:>9.2f}{r['requests'] / r['seconds']:>8.1f}"
              f"{r['total_tokens_per_s']:>10.0f}{r['output_tokens'] / r['seconds']:>10.0f}{ratio:>14.2f}"
              f"{r.get('reuse_ratio', float('nan')):>7.3f}{r.get('iterations', 0):>7}"
              f"{r.get('mean_tokens_per_iteration', 0):>8.0f}{r.get('peak_kv_blocks', 0):>8}{r.get('preemptions', 0):>8}"
              f"{pct:>8.1f}{r.get('jit_compiles', 0):>5}")
    fp8_rate = rates.fp8_matmul_flops_per_s
    rate_text = f"{rates.matmul_flops_per_s / 1e12:.0f} TFLOP/s" + ("" if fp8_rate != fp8_rate else
                                                                   f" (linears: FP8 {fp8_rate / 1e12:.0f})")
    print(f"floor: {floor.flops / 1e12:.1f} TFLOP over {rate_text} = "
          f"{floor.compute_s:.2f} s; {floor.bytes / 1e9:.1f} GB over {rates.copy_bytes_per_s / 1e9:.0f} GB/s = "
          f"{floor.memory_s:.2f} s")
