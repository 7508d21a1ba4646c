"""`batchllm generate`: answer a few prompts (or chat messages) from the command line."""

from __future__ import annotations

import argparse
import json

from batchllm.entrypoints.demo_model import demo_model_path

EXAMPLE_QUESTIONS = [
    "What is the capital of France?",
    "Give me one tip for writing clear code.",
    "What is 12 times 12?",
]


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("generate", help="generate answers for prompts given on the command line")
    p.add_argument("prompts", nargs="*", help="prompts (default: three example questions)")
    p.add_argument("--model", default=None, help="HF model folder or .gguf file (default: the packaged SmolLM2 demo)")
    p.add_argument("--no-chat", action="store_true", help="send prompts as plain text, without the chat template")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--dtype", default="auto")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true", help="print one JSON object per answer")
    return p


def run(args: argparse.Namespace) -> int:
    from batchllm import LLM, SamplingParams

    model = args.model or demo_model_path()
    prompts = args.prompts or EXAMPLE_QUESTIONS
    llm = LLM(model, dtype=args.dtype, device=args.device, max_model_len=2048 if args.model is None else None)
    params = SamplingParams(temperature=args.temperature, max_tokens=args.max_tokens, seed=args.seed)
    if args.no_chat:
        outputs = llm.generate(prompts, params)
    else:
        outputs = llm.chat([[{"role": "user", "content": p}] for p in prompts], params)
    for prompt, out in zip(prompts, outputs):
        completion = out.outputs[0]
        if args.json:
            print(json.dumps({"prompt": prompt, "text": completion.text, "finish_reason": completion.finish_reason,
                              "tokens": len(completion.token_ids)}))
        else:
            print(f"> {prompt}\n{completion.text.strip()}\n")
    return 0
