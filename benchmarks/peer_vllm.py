"""vLLM 0.26.0 over workload JSONL files ({"prompt_token_ids", "max_tokens"} per line), one engine for all
of them: dummy weights, bf16, prefix caching on (its cache reset before each file), greedy, ignore_eos;
optionally `quantization="fp8"` (weights per channel at load, activations per token) and/or
`kv_cache_dtype="fp8"`, the way vLLM users ask for them. One JSON line per file.
usage: PYTHONPATH=/root/site python3 benchmarks/peer_vllm.py MODEL_DIR [--quantization fp8]
       [--kv-cache-dtype fp8] FILE.jsonl [FILE2.jsonl ...]"""

from __future__ import annotations

import argparse
import json
import os
import time

from peer_common import greedy_params, prompts, read_requests, start_engine


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("files", nargs="+")
    parser.add_argument("--quantization", default=None)
    parser.add_argument("--kv-cache-dtype", default="auto")
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.88)
    args = parser.parse_args()
    config = (args.quantization or "bf16") + ("" if args.kv_cache_dtype == "auto" else f" kv-{args.kv_cache_dtype}")
    llm, start_s = start_engine(args.model, gpu_memory_utilization=args.gpu_memory_utilization,
                                quantization=args.quantization, kv_cache_dtype=args.kv_cache_dtype)
    print(json.dumps({"peer": "vllm", "config": config, "engine_start_s": round(start_s, 1)}), flush=True)
    for path in args.files:
        reqs = read_requests(path)
        params = greedy_params(reqs)
        llm.reset_prefix_cache()
        t = time.perf_counter()
        outs = llm.generate(prompts(reqs), params, use_tqdm=False)
        dt = time.perf_counter() - t
        gen = sum(len(o.outputs[0].token_ids) for o in outs)
        prompt = sum(len(r["prompt_token_ids"]) for r in reqs)
        print(json.dumps({"peer": "vllm 0.26.0", "config": config, "workload": os.path.basename(path),
                          "requests": len(reqs), "seconds": round(dt, 3), "prompt_tokens": prompt,
                          "output_tokens": gen, "tokens_per_s": round((prompt + gen) / dt)}), flush=True)


if __name__ == "__main__":
    main()
