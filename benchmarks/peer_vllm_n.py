"""vLLM 0.26.0 on the n-sample workload of bench_structured_n.py (lines with prompt_token_ids, max_tokens, n):
the same file, dummy bf16 weights, prefix caching on, temperature 1 with a seed per prompt, ignore_eos.
usage: PYTHONPATH=/root/site python3 benchmarks/peer_vllm_n.py MODEL_DIR n_samples.jsonl"""

from __future__ import annotations

import json
import os
import sys
import time

from peer_common import SamplingParams, prompts, read_requests, start_engine


def main(model: str, path: str) -> None:
    llm, start_s = start_engine(model, max_model_len=4096)
    print(json.dumps({"peer": "vllm", "engine_start_s": round(start_s, 1)}), flush=True)
    reqs = read_requests(path)
    params = [SamplingParams(n=r["n"], max_tokens=r["max_tokens"], ignore_eos=True, temperature=1.0, seed=i,
                             detokenize=False) for i, r in enumerate(reqs)]
    llm.reset_prefix_cache()
    t = time.perf_counter()
    outs = llm.generate(prompts(reqs), params, use_tqdm=False)
    dt = time.perf_counter() - t
    gen = sum(len(c.token_ids) for o in outs for c in o.outputs)
    print(json.dumps({"peer": "vllm 0.26.0", "workload": os.path.basename(path), "prompts": len(reqs),
                      "n": reqs[0]["n"], "seconds": round(dt, 3), "generated_tokens": gen,
                      "generated_tok_per_s": round(gen / dt, 1)}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
