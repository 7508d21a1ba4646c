"""GPU check of the engine core (device tool): fp32 greedy equality vs transformers, bf16 8B dummy smoke run.

Usage: python benchmarks/gpu_engine_check.py [--out DIR]
Prints a short table last; writes JSON to --out (or $OUT).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import torch

import bench_setup  # noqa: E402,F401  (first: repo on sys.path)

from batchllm import LLM, SamplingParams  # noqa: E402
from tests.conftest import build_tiny_model, hf_greedy, mixed_prompts  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def fp32_equality(family: str, backend: str, multi_level: bool = False) -> dict:
    folder = build_tiny_model(tempfile.mkdtemp(), family)
    prompts = mixed_prompts(seed=11, count=24)
    expected = hf_greedy(folder, prompts, 16)
    llm = LLM(folder, device="cuda", dtype="float32", skip_tokenizer_init=True, block_size=16,
              attention_backend=backend, multi_level=multi_level)
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], SamplingParams(temperature=0, max_tokens=16),
                        use_tqdm=False)
    got = [o.outputs[0].token_ids for o in outs]
    return {"family": family, "backend": backend, "multi_level": multi_level, "prompts": len(prompts),
            "equal": sum(g == e for g, e in zip(got, expected))}


def bf16_logits_close(family: str) -> dict:
    """bf16 GPU logits of our engine vs transformers fp32 on CPU for the same prompt (first generated step)."""
    from transformers import AutoModelForCausalLM

    folder = build_tiny_model(tempfile.mkdtemp(), family)
    prompt = mixed_prompts(seed=12, count=1)[0]
    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    with torch.no_grad():
        ref = hf(torch.tensor([prompt])).logits[0, -1].log_softmax(-1)
    llm = LLM(folder, device="cuda", dtype="bfloat16", skip_tokenizer_init=True)
    out = llm.generate({"prompt_token_ids": prompt}, SamplingParams(temperature=0, max_tokens=1, logprobs=1),
                       use_tqdm=False)[0].outputs[0]
    token = out.token_ids[0]
    return {"family": family, "ref_argmax": int(ref.argmax()), "ours": token,
            "logprob_ours": out.logprobs[0], "logprob_ref_same_token": float(ref[token])}


def bf16_smoke(num_prompts: int, prompt_len: int, output_len: int, backend: str, enforce_eager: bool = False) -> dict:
    llm = LLM(os.path.join(HERE, "models", "llama-3.1-8b"), load_format="dummy", dtype="bfloat16", device="cuda",
              skip_tokenizer_init=True, max_model_len=4096, max_num_batched_tokens=2048, attention_backend=backend,
              enforce_eager=enforce_eager)
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
    num_blocks, iterations = llm.engine.runner.num_blocks, llm.engine.num_iterations
    del llm
    torch.cuda.empty_cache()
    return {
        "backend": backend + (" eager" if enforce_eager else (" graphs" if backend != "reference" else "")),
        "prompts": num_prompts, "prompt_len": prompt_len,
        "output_len": output_len, "seconds": elapsed, "kv_blocks": num_blocks,
        "output_tok_s": out_tokens / elapsed, "total_tok_s": (out_tokens + num_prompts * prompt_len) / elapsed,
        "iterations": iterations,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    parser.add_argument("--backends", default="triton")
    parser.add_argument("--prompts", type=int, default=64)
    args = parser.parse_args()
    results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "date": time.strftime("%Y-%m-%d")}
    results["fp32_equality"] = [fp32_equality("llama", "reference"), fp32_equality("qwen3", "triton"),
                                fp32_equality("llama", "triton", multi_level=True)]
    results["bf16_logits"] = [bf16_logits_close(f) for f in ("llama", "qwen2")]
    runs = []
    for backend in args.backends.split(","):
        runs.append(bf16_smoke(args.prompts, 512, 128, backend, enforce_eager=backend != "reference"))
        if backend != "reference":
            runs.append(bf16_smoke(args.prompts, 512, 128, backend, enforce_eager=False))
    results["bf16_smoke"] = runs
    with open(os.path.join(args.out, "gpu_engine_check.json"), "w") as f:
        json.dump(results, f, indent=2)
    print(f"\ndevice: {results['device']}  torch {results['torch']}")
    for eq in results["fp32_equality"]:
        print(f"fp32 greedy equality vs transformers ({eq['family']}, {eq['backend']}, multi_level={eq['multi_level']}):"
              f" {eq['equal']}/{eq['prompts']} prompts equal")
    for lg in results["bf16_logits"]:
        print(f"bf16 vs fp32 reference ({lg['family']}): argmax ours {lg['ours']} ref {lg['ref_argmax']}, "
              f"logprob {lg['logprob_ours']:.4f} vs {lg['logprob_ref_same_token']:.4f}")
    print(f"{'backend':<16} {'prompts':>7} {'in/out':>9} {'seconds':>8} {'out tok/s':>10} {'total tok/s':>11} {'iters':>6}")
    for r in results["bf16_smoke"]:
        print(f"{r['backend']:<16} {r['prompts']:>7} {r['prompt_len']:>4}/{r['output_len']:<4} {r['seconds']:>8.2f} "
              f"{r['output_tok_s']:>10.1f} {r['total_tok_s']:>11.1f} {r['iterations']:>6}")


if __name__ == "__main__":
    main()
