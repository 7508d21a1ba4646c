"""GPU check of the engine core (device tool): fp32 greedy equality vs transformers, bf16 8B dummy smoke run.

Usage: python benchmarks/gpu_engine_check.py [--out DIR]
Prints a short table last; writes JSON to --out (or $OUT).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from batchllm import LLM, SamplingParams  # noqa: E402
from tests.conftest import build_tiny_model, hf_greedy, mixed_prompts  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def fp32_equality(family: str) -> dict:
    folder = build_tiny_model(tempfile.mkdtemp(), family)
    prompts = mixed_prompts(seed=11, count=24)
    expected = hf_greedy(folder, prompts, 16)
    llm = LLM(folder, device="cuda", dtype="float32", skip_tokenizer_init=True, block_size=16,
              attention_backend=os.environ.get("BATCHLLM_ATTENTION", "auto"))
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], SamplingParams(temperature=0, max_tokens=16),
                        use_tqdm=False)
    got = [o.outputs[0].token_ids for o in outs]
    return {"family": family, "prompts": len(prompts), "equal": sum(g == e for g, e in zip(got, expected))}


def bf16_smoke(num_prompts: int, prompt_len: int, output_len: int, backend: str) -> dict:
    llm = LLM(os.path.join(HERE, "models", "llama-3.1-8b"), load_format="dummy", dtype="bfloat16", device="cuda",
              skip_tokenizer_init=True, max_model_len=4096, max_num_batched_tokens=2048, attention_backend=backend)
    g = torch.Generator().manual_seed(0)
    prompts = [{"prompt_token_ids": torch.randint(0, 128000, (prompt_len,), generator=g).tolist()}
               for _ in range(num_prompts)]
    params = SamplingParams(temperature=0, max_tokens=output_len, ignore_eos=True)
    llm.generate(prompts[:2], SamplingParams(temperature=0, max_tokens=4, ignore_eos=True), use_tqdm=False)  # warm-up
    torch.cuda.synchronize()
    start = time.perf_counter()
    outs = llm.generate(prompts, params, use_tqdm=False)
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    out_tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    assert out_tokens == num_prompts * output_len
    return {
        "backend": llm.engine.runner.backend.name, "prompts": num_prompts, "prompt_len": prompt_len,
        "output_len": output_len, "seconds": elapsed, "kv_blocks": llm.engine.runner.num_blocks,
        "output_tok_s": out_tokens / elapsed, "total_tok_s": (out_tokens + num_prompts * prompt_len) / elapsed,
        "iterations": llm.engine.num_iterations,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    parser.add_argument("--backends", default="reference")
    args = parser.parse_args()
    results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "date": time.strftime("%Y-%m-%d")}
    results["fp32_equality"] = fp32_equality("llama")
    results["bf16_smoke"] = [bf16_smoke(64, 512, 128, b) for b in args.backends.split(",")]
    with open(os.path.join(args.out, "gpu_engine_check.json"), "w") as f:
        json.dump(results, f, indent=2)
    print(f"\ndevice: {results['device']}  torch {results['torch']}")
    eq = results["fp32_equality"]
    print(f"fp32 greedy equality vs transformers ({eq['family']}): {eq['equal']}/{eq['prompts']} prompts equal")
    print(f"{'backend':<10} {'prompts':>7} {'in/out':>9} {'seconds':>8} {'out tok/s':>10} {'total tok/s':>11} {'iters':>6}")
    for r in results["bf16_smoke"]:
        print(f"{r['backend']:<10} {r['prompts']:>7} {r['prompt_len']:>4}/{r['output_len']:<4} {r['seconds']:>8.2f} "
              f"{r['output_tok_s']:>10.1f} {r['total_tok_s']:>11.1f} {r['iterations']:>6}")


if __name__ == "__main__":
    main()
