"""One engine on dummy weights from the command line, as the per-run benchmark scripts start it."""

from __future__ import annotations

import argparse
import os

from batchllm import LLM
from batchllm.config import QUANTIZATIONS

MODELS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "models")


def add_engine_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=os.path.join(MODELS, "llama-3.1-8b"))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quantization", default=None, choices=[q for q in QUANTIZATIONS if q])
    parser.add_argument("--kv-cache-dtype", default="auto")


def dummy_engine(args: argparse.Namespace) -> LLM:
    """bf16 on the GPU, float32 on CPU (the smoke runs); no tokenizer; contexts up to 4096 tokens."""
    return LLM(args.model, load_format="dummy", dtype="bfloat16" if args.device == "cuda" else "float32",
               device=args.device, skip_tokenizer_init=True, max_model_len=4096, quantization=args.quantization,
               kv_cache_dtype=args.kv_cache_dtype)  # fmt: skip
