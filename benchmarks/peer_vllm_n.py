"""vLLM 0.26.0 on the n-sample workload of bench_structured_n.py (lines with prompt_token_ids, max_tokens, n):
the same file, dummy bf16 weights, prefix caching on, temperature 1 with a seed per prompt, ignore_eos.
usage: PYTHONPATH=/root/site python3 benchmarks/peer_vllm_n.py MODEL_DIR n_samples.jsonl"""
import json
import os
import sys
import time

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
from vllm import LLM, SamplingParams  # noqa: E402


def main(model: str, path: str) -> None:
    t = time.perf_counter()
    llm = LLM(model=model, load_format="dummy", dtype="bfloat16", skip_tokenizer_init=True, enable_prefix_caching=True,
              max_model_len=4096, gpu_memory_utilization=0.88, seed=0)
    print(json.dumps({"peer": "vllm", "engine_start_s": round(time.perf_counter() - t, 1)}), flush=True)
    llm.generate([{"prompt_token_ids": [5] * 64}] * 8, SamplingParams(max_tokens=8, ignore_eos=True), use_tqdm=False)
    reqs = [json.loads(line) for line in open(path) if line.strip()]
    params = [SamplingParams(n=r["n"], max_tokens=r["max_tokens"], ignore_eos=True, temperature=1.0, seed=i,
                             detokenize=False) for i, r in enumerate(reqs)]
    llm.reset_prefix_cache()
    t = time.perf_counter()
    outs = llm.generate([{"prompt_token_ids": r["prompt_token_ids"]} for r in reqs], params, use_tqdm=False)
    dt = time.perf_counter() - t
    gen = sum(len(c.token_ids) for o in outs for c in o.outputs)
    print(json.dumps({"peer": "vllm 0.26.0", "workload": os.path.basename(path), "prompts": len(reqs),
                      "n": reqs[0]["n"], "seconds": round(dt, 3), "generated_tokens": gen,
                      "generated_tok_per_s": round(gen / dt, 1)}), flush=True)


main(sys.argv[1], sys.argv[2])
