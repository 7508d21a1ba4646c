"""GPU timing for issue 17, one engine load: (1) a batch with one JSON schema against the same batch
unconstrained; (2) n samples per prompt on one prefill. Writes the n-sample workload for vLLM too.

usage: python3 benchmarks/bench_structured_n.py MODEL_DIR TOKENIZER_DIR OUT_DIR
         [--requests 4096] [--n 8] [--n-prompts 512] [--n-prompt-len 1000]
The model has dummy bf16 weights (load_format=dummy); TOKENIZER_DIR gives the grammar its vocabulary.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from batchllm import LLM, SamplingParams
from batchllm.sampling_params import StructuredOutputsParams

SCHEMA = {
    "type": "object",
    "properties": {
        "label": {"enum": ["positive", "negative", "neutral"]},
        "confidence": {"type": "number"},
        "entities": {"type": "array", "items": {"type": "object", "properties": {
            "name": {"type": "string"}, "kind": {"enum": ["person", "org", "place"]}},
            "required": ["name", "kind"]}},
        "summary": {"type": "string"},
    },
    "required": ["label", "confidence", "entities", "summary"],
}


def timed(llm: LLM, prompts, params) -> dict:
    start = time.perf_counter()
    outs = llm.generate(prompts, params, use_tqdm=False)
    seconds = time.perf_counter() - start
    generated = sum(len(c.token_ids) for o in outs for c in o.outputs)
    return {"seconds": round(seconds, 3), "generated_tokens": generated,
            "generated_tok_per_s": round(generated / seconds, 1), "outputs": outs}


def phase_times(trace, first_row: int) -> dict:
    """Seconds and iterations of the run's iterations with prompt work and of its pure-decode ones, and the
    rows a decode iteration ran (each row's time is the gap to the next launch)."""
    t = trace.column("time_s")[first_row:]
    dt = np.diff(t)
    prefill = trace.column("prefill_tokens")[first_row:-1]
    decode = trace.column("decode_tokens")[first_row:-1]
    pure = prefill == 0
    return {"prefill_iterations": int((~pure).sum()), "prefill_s": round(float(dt[~pure].sum()), 2),
            "decode_iterations": int(pure.sum()), "decode_s": round(float(dt[pure].sum()), 2),
            "decode_rows_mean": round(float(decode[pure].mean()), 1) if pure.any() else 0,
            "decode_ms_mean": round(float(dt[pure].mean() * 1e3), 2) if pure.any() else 0}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("tokenizer")
    ap.add_argument("out")
    ap.add_argument("--requests", type=int, default=4096)
    ap.add_argument("--prompt-len", type=int, default=300)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--n-prompts", type=int, default=512)
    ap.add_argument("--n-prompt-len", type=int, default=1000)
    ap.add_argument("--n-max-tokens", type=int, default=100)
    ap.add_argument("--overlap-ablation", action="store_true",
                    help="also time both runs with overlap_scheduling off, and skip the n-sample part")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    rng = np.random.default_rng(0)
    t = time.perf_counter()
    llm = LLM(args.model, tokenizer=args.tokenizer, load_format="dummy", dtype="bfloat16")
    rows = {"engine_start_s": round(time.perf_counter() - t, 1)}

    vocab = 49000  # the grammar's tokenizer covers ids < 49152
    prompts = [{"prompt_token_ids": rng.integers(1, vocab, size=args.prompt_len).tolist()} for _ in range(args.requests)]
    warm = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)
    llm.generate(prompts[:8], warm, use_tqdm=False)
    free = timed(llm, prompts, SamplingParams(temperature=0, max_tokens=args.max_tokens, ignore_eos=True))
    spec = StructuredOutputsParams(json=SCHEMA)  # not compiled before: its compile is inside the timed run
    constrained = timed(llm, prompts, SamplingParams(temperature=0, max_tokens=args.max_tokens, ignore_eos=True,
                                                     structured_outputs=spec))
    finished = [o.outputs[0] for o in constrained.pop("outputs")]
    free.pop("outputs")
    parsed = 0
    for c in finished:
        try:
            json.loads(c.text)
            parsed += 1
        except ValueError:
            pass
    rows["unconstrained"] = free
    rows["json_schema"] = {**constrained, "stopped": sum(c.finish_reason == "stop" for c in finished),
                           "parsed_json": parsed, "compilations": llm.engine.structured.compiler.compilations}
    rows["json_schema_vs_unconstrained_tok_per_s"] = round(
        constrained["generated_tok_per_s"] / free["generated_tok_per_s"], 3)

    if args.overlap_ablation:
        llm.set_scheduling(overlap_scheduling=False)
        for name, extra in (("unconstrained_no_overlap", {}), ("json_schema_no_overlap", {"structured_outputs": spec})):
            run = timed(llm, prompts, SamplingParams(temperature=0, max_tokens=args.max_tokens, ignore_eos=True, **extra))
            run.pop("outputs")
            rows[name] = run
        print(json.dumps(rows))
        return
    n_prompts = [rng.integers(1, vocab, size=args.n_prompt_len).tolist() for _ in range(args.n_prompts)]
    with open(os.path.join(args.out, "n_samples.jsonl"), "w") as f:
        for p in n_prompts:
            f.write(json.dumps({"prompt_token_ids": p, "max_tokens": args.n_max_tokens, "n": args.n}) + "\n")
    trace = llm.engine.trace
    before = int(trace.column("prefill_tokens").sum())
    before_iterations = len(trace)
    n_run = timed(llm, [{"prompt_token_ids": p} for p in n_prompts],
                  [SamplingParams(n=args.n, temperature=1.0, seed=i, max_tokens=args.n_max_tokens, ignore_eos=True)
                   for i in range(len(n_prompts))])
    n_run.pop("outputs")
    n_run["iterations"] = len(trace) - before_iterations
    n_run["prefill_tokens"] = int(trace.column("prefill_tokens").sum()) - before
    n_run["prompt_tokens_once"] = args.n_prompts * args.n_prompt_len
    n_run["phases"] = phase_times(trace, first_row=len(trace) - n_run["iterations"])
    rows[f"n{args.n}"] = n_run
    with open(os.path.join(args.out, "structured_n.json"), "w") as f:
        json.dump(rows, f, indent=2)
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
