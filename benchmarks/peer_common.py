"""What the vLLM peer scripts share (peer_vllm.py, peer_vllm_n.py, peer_vllm_dp.py): vLLM's engine built
the way these benchmarks time it (dummy weights, bf16, token-id prompts, prefix caching on, in-process
engine core), warmed up once, and the workload JSONL files ({"prompt_token_ids", "max_tokens"[, "n"]})."""

from __future__ import annotations

import json
import os
import time

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
from vllm import LLM, SamplingParams  # noqa: E402


def start_engine(model: str, max_model_len: int = 8192, gpu_memory_utilization: float = 0.88,
                 **options) -> tuple[LLM, float]:  # fmt: skip
    """(engine, seconds its start took), after one small warm-up generate (not timed by the callers).
    `options`: further vLLM engine arguments (quantization, kv_cache_dtype)."""
    start = time.perf_counter()
    llm = LLM(model=model, load_format="dummy", dtype="bfloat16", skip_tokenizer_init=True, enable_prefix_caching=True,
              max_model_len=max_model_len, gpu_memory_utilization=gpu_memory_utilization, seed=0, **options)
    seconds = time.perf_counter() - start
    llm.generate([{"prompt_token_ids": [5] * 64}] * 8, SamplingParams(max_tokens=8, ignore_eos=True), use_tqdm=False)
    return llm, seconds


def read_requests(path: str) -> list[dict]:
    return [json.loads(line) for line in open(path) if line.strip()]


def greedy_params(requests: list[dict]) -> list[SamplingParams]:
    """Greedy, ignore_eos (the fixed output lengths the workloads ask), no detokenizing."""
    return [SamplingParams(max_tokens=r["max_tokens"], ignore_eos=True, temperature=0.0, detokenize=False)
            for r in requests]


def prompts(requests: list[dict]) -> list[dict]:
    return [{"prompt_token_ids": r["prompt_token_ids"]} for r in requests]
