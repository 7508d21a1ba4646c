"""``batchllm analyze FILE``: how much prefill a request file can save by global prefix sharing.

Reads a JSONL request file (see requests_jsonl.py), tokenizes it (``--model`` gives the tokenizer; lines
with ``prompt_token_ids`` need none), groups the prompts by shared prefix (batchllm.prefix) and prints the
reuse statistics, including what an LRU prefix cache of a given size would have reused in file order.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, Callable, Optional, Sequence


from batchllm.prefix.token_arrays import TokenArraysBuilder
from batchllm.batch.requests_jsonl import RequestRecord, read_request_records

DEFAULT_LRU_CACHE_BLOCKS = 16_384  # 262,144 tokens at block size 16: a typical single-GPU KV pool
MAX_ERRORS_SHOWN = 10
_TEXT_BATCH = 512  # texts tokenized per call (the fast tokenizer parallelises a batch)


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "analyze",
        help="prefix-sharing statistics of a request JSONL file",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("file", help="JSONL requests: {'prompt'|'prompt_token_ids'|'messages'} or OpenAI batch lines")
    p.add_argument("--model", help="model folder or .gguf file whose tokenizer (and chat template) to use")
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.add_argument("--block-size", type=int, default=16, help="KV block size in tokens (default 16)")
    p.add_argument("--min-shared-len", type=int, default=None,
                   help="shortest prefix worth a group (default: one block)")
    p.add_argument("--no-align", action="store_true", help="do not cut shared prefixes to whole KV blocks")
    p.add_argument("--multi-level", action="store_true", help="nested groups (each level's KV stored once)")
    lru = p.add_mutually_exclusive_group()
    lru.add_argument("--lru-cache-blocks", type=int, default=None,
                     help=f"LRU prefix cache size to simulate, in blocks (default {DEFAULT_LRU_CACHE_BLOCKS}; 0 skips)")
    lru.add_argument("--lru-cache-tokens", type=int, default=None, help="the same, in tokens")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def run(args: argparse.Namespace) -> int:
    from batchllm.prefix import analyze_prefixes

    if args.block_size <= 0:
        print("error: --block-size must be positive", file=sys.stderr)
        return 2
    cache_blocks = _lru_blocks(args)
    tokenizer = None
    if args.model:
        from batchllm.model.tokenizer import load_tokenizer

        try:
            tokenizer = load_tokenizer(args.model)
        except ValueError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    t0 = time.perf_counter()
    try:
        loaded = load_prompts(args.file, tokenizer, progress=not args.no_progress)
    except OSError as err:
        print(f"error: cannot read {args.file}: {err}", file=sys.stderr)
        return 2
    t1 = time.perf_counter()
    analysis = analyze_prefixes(
        loaded.build(),
        min_shared_len=args.min_shared_len,
        block_size=args.block_size,
        align_to_blocks=not args.no_align,
        multi_level=args.multi_level,
        lru_cache_blocks=cache_blocks or None,
    )
    t2 = time.perf_counter()
    report: dict[str, Any] = {"file": args.file, **analysis.stats.to_dict()}
    report["lru_cache_tokens"] = None if not cache_blocks else cache_blocks * args.block_size
    report["invalid_lines"] = loaded.invalid_lines
    report["errors"] = loaded.errors
    report["seconds"] = {"read_and_tokenize": round(t1 - t0, 3), "analyze": round(t2 - t1, 3)}
    if args.format == "json":
        print(json.dumps(report, indent=2))
    else:
        print(format_text(report))
    for message in loaded.errors:
        print(f"warning: {message}", file=sys.stderr)
    return 0 if analysis.stats.prompts > 0 or loaded.invalid_lines == 0 else 1


def _lru_blocks(args: argparse.Namespace) -> int:
    if args.lru_cache_tokens is not None:
        return max(args.lru_cache_tokens, 0) // args.block_size
    if args.lru_cache_blocks is not None:
        return max(args.lru_cache_blocks, 0)
    return DEFAULT_LRU_CACHE_BLOCKS


class LoadedPrompts(TokenArraysBuilder):
    """Token ids of the valid lines (flat int32 + offsets), and the invalid lines' count and first errors."""

    def __init__(self) -> None:
        super().__init__()
        self.invalid_lines = 0
        self.errors: list[str] = []

    def add(self, ids) -> None:
        self.append(ids)

    def fail(self, line_number: int, message: str) -> None:
        self.invalid_lines += 1
        if len(self.errors) < MAX_ERRORS_SHOWN:
            self.errors.append(f"line {line_number}: {message}")


def load_prompts(path: str, tokenizer=None, progress: bool = True) -> LoadedPrompts:
    """Read and tokenize a request file, keeping line order; texts are tokenized in batches."""
    out = LoadedPrompts()
    pending: list[tuple[RequestRecord, Optional[Sequence[int]]]] = []
    pending_texts = 0

    def flush() -> None:
        nonlocal pending_texts
        texts = [r.prompt for r, ids in pending if ids is None]
        encoded = iter(tokenizer(texts, add_special_tokens=True)["input_ids"] if texts else [])
        for record, ids in pending:
            out.add(ids if ids is not None else next(encoded))
        pending.clear()
        pending_texts = 0

    for record in read_request_records(path, progress=progress):
        if not record.ok:
            out.fail(record.line_number, record.error)
            continue
        if record.prompt_token_ids is not None:
            pending.append((record, record.prompt_token_ids))
        elif tokenizer is None:
            out.fail(record.line_number, "a text or chat prompt needs --model to be tokenized")
            continue
        elif record.messages is not None:
            try:
                pending.append((record, _chat_ids(tokenizer, record.messages)))
            except Exception as err:  # a template error concerns this line only
                out.fail(record.line_number, f"chat template failed: {err}")
                continue
        else:
            pending.append((record, None))
            pending_texts += 1
        if pending_texts >= _TEXT_BATCH or len(pending) >= 8 * _TEXT_BATCH:
            flush()
    flush()
    return out


def _chat_ids(tokenizer, messages) -> list[int]:
    encoded = tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=True)
    # transformers 5 returns a BatchEncoding; older versions a plain list.
    ids = encoded["input_ids"] if hasattr(encoded, "keys") else encoded
    if ids and isinstance(ids[0], list):
        ids = ids[0]
    return [int(t) for t in ids]


def _pct(x: Optional[float]) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _dist(d: dict, fmt: Callable[[float], str] = lambda v: f"{v:,.0f}") -> str:
    if not d["count"]:
        return "-"
    return f"min {fmt(d['min'])} / median {fmt(d['p50'])} / mean {d['mean']:,.1f} / p90 {fmt(d['p90'])} / max {fmt(d['max'])}"


def format_text(r: dict) -> str:
    mode = "multi-level" if r["multi_level"] else "first-level"
    align = f"cut to {r['block_size']}-token blocks" if r["aligned_to_blocks"] else "token granularity"
    lru = "not simulated"
    if r["lru_reuse_ratio"] is not None:
        lru = f"{_pct(r['lru_reuse_ratio'])}  (LRU cache of {r['lru_cache_blocks']:,} blocks = {r['lru_cache_tokens']:,} tokens, file order)"
    hist = ", ".join(f"{k}: {v:,}" for k, v in r["group_size_histogram"].items()) or "-"
    lines = [
        f"prefix analysis of {r['file']}",
        f"  prompts               {r['prompts']:,}" + (f"  ({r['invalid_lines']:,} invalid lines skipped)" if r["invalid_lines"] else ""),
        f"  prompt tokens         {r['prompt_tokens']:,}",
        f"  prefill tokens        {r['prefill_tokens']:,}  (after prefix sharing)",
        f"  token reuse ratio     {_pct(r['reuse_ratio'])}  ({mode} groups, {align}, min shared {r['min_shared_len']})",
        f"  ideal (prefix tree)   {_pct(r['trie_reuse_ratio'])}  (every shared token computed once)",
        f"  LRU prefix cache      {lru}",
        f"  groups                {r['groups']:,}  ({r['grouped_prompts']:,} prompts grouped, {r['ungrouped_prompts']:,} not)",
        f"  group size            {_dist(r['group_size'])}",
        f"  group sizes           {hist}",
        f"  shared prefix length  {_dist(r['shared_prefix_len'])}",
    ]
    if not r["exact"]:
        lines.append("  note: the prefix tree was too deep for the exact DP; deep levels were not offered as groups")
    return "\n".join(lines)
