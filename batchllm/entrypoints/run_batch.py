"""``batchllm run-batch -i requests.jsonl -o results.jsonl``: the batch job, OpenAI Batch API format.

The whole input file is read (streaming), tokenized and analysed for shared prefixes before anything runs;
then every valid request goes to the engine at once and each result line is appended to the output file as
its request finishes. Rerunning the same command resumes: custom_ids already in the output are skipped.
A bad request (malformed line, unknown url or parameter, prompt too long, duplicate custom_id) gets an error
line and the rest of the batch runs; the exit status is non-zero only when the job itself could not run.

Memory: while reading, prompts are kept as one flat int32 token array plus a few small per-request arrays
(custom_id strings, interned SamplingParams), not as Python objects per line. The engine then holds a Python
request object (with its token list) for every request it was given: all of them by default, or
``--max-requests-per-pass`` at a time (passes follow the prefix groups, so a group stays in one pass).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import sys
import time
from array import array
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional

import numpy as np

from batchllm.batch.openai_format import (
    RequestError,
    batch_request_from_record,
    error_line,
    success_line,
)
from batchllm.prefix.token_arrays import TokenArraysBuilder
from batchllm.batch.requests_jsonl import read_request_records
from batchllm.batch.results_file import (
    DUPLICATE_CODE,
    OutputLockedError,
    ResultsWriter,
    ResumeState,
    scan_output,
)

_TEXT_BATCH = 512  # texts tokenized per tokenizer call (the fast tokenizer parallelises a batch)
DEMO_MAX_MODEL_LEN = 2048  # the demo model's context when --model is omitted (as `batchllm generate`)
MAX_ERRORS_SHOWN = 10


# ------------------------------------------------------------------------------------------ CLI definition


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "run-batch",
        help="run an OpenAI-format batch JSONL file (resumable)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("-i", "--input", required=True, help="requests JSONL (OpenAI batch lines or plain prompt lines)")
    p.add_argument("-o", "--output", required=True, help="results JSONL; appended to, and read on a rerun to resume")
    p.add_argument("--model", default=None, help="HF model folder or .gguf file (default: the packaged SmolLM2 demo)")
    p.add_argument("--served-model-name", default=None,
                   help="'model' field of the responses when a request names none (default: the model's file name)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the prefix analysis and the memory plan; load no model, write nothing")
    p.add_argument("--overwrite", action="store_true", help="start over: truncate the output instead of resuming")
    p.add_argument("--default-max-tokens", type=int, default=None,
                   help="max_tokens of requests that give none (default: up to max_model_len, as OpenAI)")
    p.add_argument("--max-requests-per-pass", type=int, default=0,
                   help="give the engine at most this many requests at a time (default 0: all at once)")
    p.add_argument("--summary-json", default=None, help="also write the final summary to this JSON file")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    e = p.add_argument_group("engine options")
    e.add_argument("--dtype", default="auto", help="auto (checkpoint dtype on GPU, float32 on CPU), float32, bfloat16, float16")
    e.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    e.add_argument("--max-model-len", type=int, default=None, help="context length (default: the model's)")
    e.add_argument("--max-num-seqs", type=int, default=256, help="cap on running requests (default 256)")
    e.add_argument("--max-num-batched-tokens", type=int, default=None, help="token budget of one iteration")
    e.add_argument("--gpu-memory-utilization", type=float, default=0.90, help="fraction of GPU memory to use")
    e.add_argument("--seed", type=int, default=0,
                   help="job seed; a sampled request without 'seed' gets one derived from it and its custom_id")
    e.add_argument("--block-size", type=int, default=16, help="KV block size in tokens (power of two)")
    e.add_argument("--scheduling", choices=("batchllm", "vllm-like"), default="batchllm",
                   help="batchllm: prefix groups, decode-first order, memory-centric batching (default); "
                        "vllm-like: FCFS with an LRU prefix cache (the baseline)")
    e.add_argument("--prefix-clustering", action=argparse.BooleanOptionalAction, default=None,
                   help="prefix groups: each shared prefix prefilled once (overrides --scheduling)")
    e.add_argument("--decode-first", action=argparse.BooleanOptionalAction, default=None,
                   help="order by expected decode / prefill length instead of first-come-first-served")
    e.add_argument("--token-batching", choices=("memory", "count"), default=None,
                   help="memory: admit by KV memory needed, no request cap; count: max-num-seqs cap")
    e.add_argument("--prefix-caching", action=argparse.BooleanOptionalAction, default=None,
                   help="LRU automatic prefix caching of KV blocks (vLLM-style)")
    e.add_argument("--multi-level", action=argparse.BooleanOptionalAction, default=None,
                   help="nested prefix groups (system prompt -> document -> question), every level stored once")
    e.add_argument("--trace", default=None, help="write the engine's per-iteration trace (JSON) here for `batchllm report`")
    return p


SCHEDULER_FLAGS = ("prefix_clustering", "decode_first", "token_batching", "prefix_caching", "multi_level")


def scheduler_overrides(args: argparse.Namespace) -> dict:
    """The single-feature switches given on the command line (None = the --scheduling preset decides)."""
    return {name: getattr(args, name) for name in SCHEDULER_FLAGS if getattr(args, name, None) is not None}


def run(args: argparse.Namespace) -> int:
    log = _stderr
    if args.max_requests_per_pass < 0:
        log("error: --max-requests-per-pass must be >= 0")
        return 2
    if args.default_max_tokens is not None and args.default_max_tokens < 1:
        log("error: --default-max-tokens must be >= 1")
        return 2
    if not os.path.isfile(args.input):
        log(f"error: input file {args.input!r} does not exist")
        return 2
    try:
        model = args.model
        if model is None:
            from batchllm.entrypoints.demo_model import demo_model_path

            model = demo_model_path()
    except ValueError as err:
        log(f"error: {err}")
        return 2
    max_model_len = args.max_model_len
    if max_model_len is None and args.model is None:
        max_model_len = DEMO_MAX_MODEL_LEN
    options = JobOptions(
        seed=args.seed,
        default_max_tokens=args.default_max_tokens,
        max_requests_per_pass=args.max_requests_per_pass,
        served_model_name=args.served_model_name or _model_name(model),
        progress=not args.no_progress,
        block_size=args.block_size,
    )
    if args.dry_run:
        return _dry_run(args, model, max_model_len, options)

    previous = signal.getsignal(signal.SIGTERM)
    try:
        signal.signal(signal.SIGTERM, _raise_on_sigterm)
    except ValueError:  # not the main thread
        previous = None
    try:
        try:
            writer, resume = open_output(args.output, overwrite=args.overwrite, log=log)
        except (OSError, OutputLockedError) as err:
            log(f"error: cannot open the output: {err}")
            return 2
        with writer:
            from batchllm import LLM

            try:
                t0 = time.perf_counter()
                log(f"loading {model} ...")
                llm = LLM(model, dtype=args.dtype, device=args.device, max_model_len=max_model_len, seed=args.seed,
                          block_size=args.block_size, gpu_memory_utilization=args.gpu_memory_utilization,
                          max_num_batched_tokens=args.max_num_batched_tokens, max_num_seqs=args.max_num_seqs,
                          scheduling=args.scheduling, **scheduler_overrides(args))
                load_seconds = time.perf_counter() - t0
            except (ValueError, OSError) as err:
                log(f"error: cannot load the model: {err}")
                return 2
            summary = run_batch_to_writer(llm, args.input, writer, resume, options, log=log)
            summary.seconds["load_model"] = round(load_seconds, 3)
            if args.trace:
                llm.save_trace(args.trace, label=args.scheduling)
        log(format_summary(summary))
        if args.summary_json:
            with open(args.summary_json, "w") as f:
                json.dump(summary.to_dict(), f, indent=2)
        return 0
    except KeyboardInterrupt:
        log(f"\ninterrupted: every finished request is in {args.output}; rerun the same command to resume")
        return 130
    except SystemExit as stop:
        if stop.code == 143:
            log(f"\nterminated: every finished request is in {args.output}; rerun the same command to resume")
        raise
    except Exception:
        log(f"\nthe job stopped on an unexpected error (below); every finished request is in {args.output}, "
            "and rerunning the same command resumes")
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _raise_on_sigterm(signum, frame) -> None:
    raise SystemExit(143)


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _model_name(model: str) -> str:
    name = os.path.basename(os.path.normpath(model))
    return name[:-5] if name.endswith(".gguf") else name


# ----------------------------------------------------------------------------------------------- the job


@dataclass
class JobOptions:
    seed: int = 0
    default_max_tokens: Optional[int] = None
    max_requests_per_pass: int = 0  # 0: every request at once
    served_model_name: str = "model"
    progress: bool = True
    block_size: int = 16


@dataclass
class BatchSummary:
    input_lines: int = 0  # non-blank lines of the input
    already_done: int = 0  # skipped: their custom_id was in the output already
    to_run: int = 0
    succeeded: int = 0
    errors: int = 0  # error lines written by this run
    error_codes: dict = field(default_factory=dict)
    first_errors: list = field(default_factory=list)
    prompt_tokens: int = 0  # of the requests run
    completion_tokens: int = 0
    prefill_tokens: Optional[int] = None  # after global prefix sharing
    reuse_ratio: Optional[float] = None
    lru_reuse_ratio: Optional[float] = None
    lru_cache_blocks: Optional[int] = None
    prefix_groups: Optional[int] = None
    seconds: dict = field(default_factory=dict)
    output: Optional[str] = None

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        gen = self.seconds.get("generate") or 0.0
        d["requests_per_s"] = self.succeeded / gen if gen else None
        d["output_tokens_per_s"] = self.completion_tokens / gen if gen else None
        d["total_tokens_per_s"] = (self.prompt_tokens + self.completion_tokens) / gen if gen else None
        return d


class CompactRequests(TokenArraysBuilder):
    """The runnable requests of a batch, kept compact: flat int32 tokens + small per-request arrays."""

    def __init__(self) -> None:
        super().__init__()
        self.custom_ids: list[str] = []
        self.kinds = bytearray()  # 1 chat, 0 completion
        self.param_index = array("i")
        self.seeds = array("q")  # derived seed, or -1 (the interned params carry the request's own seed)
        self.model_index = array("i")
        self.output_budget = array("q")  # max output tokens (for the memory plan)
        self._params: list = []
        self._params_keys: dict[str, int] = {}
        self._models: list[Optional[str]] = []
        self._model_keys: dict[Optional[str], int] = {}

    def __len__(self) -> int:
        return len(self.custom_ids)

    def add(self, request, ids: np.ndarray, max_model_len: int) -> None:
        params = request.params
        seed = -1
        if request.seed_derived:
            seed = params.seed
            params = dataclasses.replace(params, seed=None)
        key = repr(params)
        index = self._params_keys.get(key)
        if index is None:
            index = self._params_keys[key] = len(self._params)
            self._params.append(params)
        model_idx = self._model_keys.get(request.model)
        if model_idx is None:
            model_idx = self._model_keys[request.model] = len(self._models)
            self._models.append(request.model)
        self.custom_ids.append(request.custom_id)
        self.kinds.append(1 if request.kind == "chat" else 0)
        self.param_index.append(index)
        self.seeds.append(seed)
        self.model_index.append(model_idx)
        self.output_budget.append(params.output_budget(len(ids), max_model_len))
        self.append(ids)

    def params(self, i: int):
        params = self._params[self.param_index[i]]
        seed = self.seeds[i]
        return params if seed < 0 else dataclasses.replace(params, seed=int(seed))

    def model(self, i: int) -> Optional[str]:
        return self._models[self.model_index[i]]

    def kind(self, i: int) -> str:
        return "chat" if self.kinds[i] else "completion"


@dataclass
class _Pending:
    request: Any
    text: Optional[str]  # to tokenize
    add_special_tokens: bool
    ids: Optional[np.ndarray]


def collect_requests(
    path: str,
    tokenizer,
    vocab_size: int,
    max_model_len: int,
    resume: ResumeState,
    options: JobOptions,
    emit_error: Callable[[str, RequestError], None],
    summary: BatchSummary,
) -> CompactRequests:
    """Stream the input: skip what the output already has, report bad requests, keep the runnable ones."""
    requests = CompactRequests()
    seen: set[str] = set()
    duplicates: dict[str, int] = {}
    pending: list[_Pending] = []
    pending_texts = 0

    def flush() -> None:
        nonlocal pending_texts
        for special in (True, False):
            items = [p for p in pending if p.ids is None and p.add_special_tokens == special]
            if items:
                encoded = tokenizer([p.text for p in items], add_special_tokens=special)["input_ids"]
                for p, ids in zip(items, encoded):
                    p.ids = np.asarray(ids, dtype=np.int64)
        for p in pending:
            error = _prompt_error(p.ids, vocab_size, max_model_len)
            if error is not None:
                emit_error(p.request.custom_id, error)
            else:
                requests.add(p.request, p.ids, max_model_len)
        pending.clear()
        pending_texts = 0

    for record in read_request_records(path, progress=options.progress):
        summary.input_lines += 1
        custom_id = record.custom_id if record.custom_id is not None else f"line-{record.line_number}"
        if custom_id in seen:
            n = duplicates[custom_id] = duplicates.get(custom_id, 0) + 1
            if n > resume.duplicate_notices.get(custom_id, 0):
                emit_error(custom_id, RequestError(
                    DUPLICATE_CODE, f"line {record.line_number}: custom_id {custom_id!r} was already used by an "
                    "earlier line; only the first one runs", "custom_id"))
            continue
        seen.add(custom_id)
        if custom_id in resume.done:
            summary.already_done += 1
            continue
        try:
            request = batch_request_from_record(record, custom_id, vocab_size, options.seed,
                                                options.default_max_tokens)
            if request.kind == "chat":
                if tokenizer is None:
                    raise RequestError("invalid_request", "a chat request needs the model's tokenizer")
                try:
                    text = tokenizer.apply_chat_template(request.messages, tokenize=False, add_generation_prompt=True)
                except Exception as err:  # template errors come in many types; they concern this line only
                    raise RequestError("chat_template_error", f"the chat template failed: {err}", "messages") from err
                pending.append(_Pending(request, text, False, None))
                pending_texts += 1
            elif request.token_ids is not None:
                pending.append(_Pending(request, None, False, np.asarray(request.token_ids, dtype=np.int64)))
            else:
                if tokenizer is None:
                    raise RequestError("invalid_request", "a text prompt needs the model's tokenizer")
                pending.append(_Pending(request, request.text, True, None))
                pending_texts += 1
        except RequestError as err:
            emit_error(custom_id, err)
            continue
        if pending_texts >= _TEXT_BATCH or len(pending) >= 8 * _TEXT_BATCH:
            flush()
    flush()
    return requests


def _prompt_error(ids: np.ndarray, vocab_size: int, max_model_len: int) -> Optional[RequestError]:
    """The checks of engine/validation.py's prompt_errors, vectorised."""
    if len(ids) == 0:
        return RequestError("invalid_prompt", "the prompt is empty (it must have at least one token)", "prompt")
    if len(ids) >= max_model_len:
        return RequestError(
            "context_length_exceeded",
            f"the prompt has {len(ids)} tokens, but max_model_len={max_model_len} leaves no room for output",
            "prompt")
    if int(ids.min()) < 0 or int(ids.max()) >= vocab_size:
        bad = ids[(ids < 0) | (ids >= vocab_size)][:5].tolist()
        return RequestError("invalid_prompt", f"token ids {bad} are outside the vocabulary [0, {vocab_size})", "prompt")
    return None


def analyse(requests: CompactRequests, block_size: int, lru_cache_blocks: Optional[int]):
    from batchllm.prefix import analyze_prefixes

    return analyze_prefixes(requests.build(), block_size=block_size,
                            lru_cache_blocks=lru_cache_blocks or None)


def open_output(path: str, overwrite: bool = False, log: Callable[[str], None] = _stderr):
    """(writer, resume state): scan (and repair) an existing output unless overwriting, then lock it for append."""
    if overwrite:
        return ResultsWriter(path, truncate=True), ResumeState()
    resume = scan_output(path)
    if resume.lines:
        log(f"resuming: {resume.lines:,} lines already in {path}")
    if resume.truncated_bytes:
        log(f"  cut off a torn last line ({resume.truncated_bytes} bytes) left by an interrupted run")
    if resume.bad_lines:
        log(f"  warning: {resume.bad_lines} lines of {path} are not result lines; ignored")
    return ResultsWriter(path), resume


def run_batch_file(llm, input_path: str, output_path: str, overwrite: bool = False,
                   log: Callable[[str], None] = _stderr, **options) -> BatchSummary:
    """Python API: run ``input_path`` through ``llm`` (a batchllm.LLM), appending to/resuming ``output_path``.

    options: JobOptions fields (seed, default_max_tokens, max_requests_per_pass, served_model_name, progress,
    block_size).
    """
    opts = JobOptions(**options)
    if "served_model_name" not in options:
        opts.served_model_name = _model_name(llm.config.model)
    if "block_size" not in options:
        opts.block_size = llm.config.cache.block_size
    writer, resume = open_output(output_path, overwrite=overwrite, log=log)
    with writer:
        return run_batch_to_writer(llm, input_path, writer, resume, opts, log=log)


def run_batch_to_writer(llm, input_path: str, writer: ResultsWriter, resume: ResumeState, options: JobOptions,
                        log: Callable[[str], None] = _stderr) -> BatchSummary:
    summary = BatchSummary(output=writer.path)
    tokenizer = llm.get_tokenizer()

    def emit_error(custom_id: str, error: RequestError) -> None:
        writer.write(error_line(custom_id, error))
        _count_error(summary, custom_id, error)

    t0 = time.perf_counter()
    requests = collect_requests(input_path, tokenizer, llm.vocab_size, llm.config.max_model_len, resume, options,
                                emit_error, summary)
    t1 = time.perf_counter()
    summary.seconds["read_and_tokenize"] = round(t1 - t0, 3)
    summary.to_run = len(requests)
    analysis = None
    if len(requests):
        num_blocks = getattr(getattr(llm.engine, "runner", None), "num_blocks", None)
        analysis = analyse(requests, options.block_size, num_blocks)
        _set_analysis(summary, analysis)
    summary.seconds["analyze"] = round(time.perf_counter() - t1, 3)
    log(format_plan_line(summary))
    t2 = time.perf_counter()
    for i, output in _run(llm, requests, analysis, options, summary):
        kind = requests.kind(i)
        token_texts = None
        completion = output.outputs[0]
        if completion.logprobs is not None and tokenizer is not None:
            token_texts = [tokenizer.decode([t]) for t in completion.token_ids]
        model = requests.model(i) or options.served_model_name
        writer.write(success_line(requests.custom_ids[i], kind, model, output, token_texts))
        summary.succeeded += 1
        summary.prompt_tokens += len(output.prompt_token_ids)
        summary.completion_tokens += len(completion.token_ids)
    summary.seconds["generate"] = round(time.perf_counter() - t2, 3)
    return summary


def _count_error(summary: BatchSummary, custom_id: str, error: RequestError) -> None:
    summary.errors += 1
    summary.error_codes[error.code] = summary.error_codes.get(error.code, 0) + 1
    if len(summary.first_errors) < MAX_ERRORS_SHOWN:
        summary.first_errors.append(f"{custom_id}: {error.code}: {error.message}")


def _set_analysis(summary: BatchSummary, analysis) -> None:
    stats = analysis.stats
    summary.prefill_tokens = stats.prefill_tokens
    summary.reuse_ratio = stats.reuse_ratio
    summary.lru_reuse_ratio = stats.lru_reuse_ratio
    summary.lru_cache_blocks = stats.lru_cache_blocks
    summary.prefix_groups = stats.groups


def _passes(requests: CompactRequests, analysis, limit: int) -> list[np.ndarray]:
    n = len(requests)
    if n == 0:
        return []
    if limit <= 0 or limit >= n:
        return [np.arange(n)]
    # Members of a prefix group next to each other, so a group is split over passes at most once.
    order = np.argsort(np.asarray(analysis.request_group), kind="stable")
    return [order[i: i + limit] for i in range(0, n, limit)]


def _run(llm, requests: CompactRequests, analysis, options: JobOptions, summary: BatchSummary) -> Iterator:
    from tqdm.auto import tqdm

    tokens, offsets = requests.tokens, requests.offsets
    bar = tqdm(total=len(requests), unit="req", desc="requests", disable=not options.progress or not len(requests),
               dynamic_ncols=True, smoothing=0.1)
    start = time.perf_counter()
    last_postfix = 0.0
    try:
        for window in _passes(requests, analysis, options.max_requests_per_pass):
            encoded = [(None, tokens[offsets[i]: offsets[i + 1]].tolist()) for i in window]
            params_list = [requests.params(int(i)) for i in window]
            for j, output in llm.run_encoded(encoded, params_list):
                yield int(window[j]), output
                bar.update(1)
                now = time.perf_counter()
                if now - last_postfix >= 0.5:
                    last_postfix = now
                    elapsed = max(now - start, 1e-9)
                    bar.set_postfix_str(f"{summary.completion_tokens / elapsed:,.0f} out tok/s, "
                                        f"{(summary.prompt_tokens + summary.completion_tokens) / elapsed:,.0f} tok/s, "
                                        f"{summary.errors} errors", refresh=False)
            del encoded, params_list
    finally:
        bar.close()


# ------------------------------------------------------------------------------------------------ reports


def _pct(x: Optional[float]) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def format_plan_line(s: BatchSummary) -> str:
    head = f"{s.input_lines:,} lines: {s.to_run:,} to run"
    if s.already_done:
        head += f", {s.already_done:,} already in the output"
    if s.errors:
        head += f", {s.errors:,} invalid (error lines written)"
    if s.reuse_ratio is None:
        return head
    return (f"{head}\nprefix analysis: {s.prefill_tokens:,} tokens to prefill after sharing in {s.prefix_groups:,} "
            f"groups; token reuse ratio {_pct(s.reuse_ratio)} (LRU prefix cache in file order: "
            f"{_pct(s.lru_reuse_ratio)})")


def format_summary(s: BatchSummary) -> str:
    d = s.to_dict()
    secs = s.seconds
    lines = [
        "run-batch summary",
        f"  requests          {s.succeeded:,} done, {s.errors:,} error lines, {s.already_done:,} skipped (already in the output)",
        f"  tokens            {s.prompt_tokens:,} prompt, {s.completion_tokens:,} generated",
        f"  prefix sharing    reuse ratio {_pct(s.reuse_ratio)} ({'-' if s.prefill_tokens is None else f'{s.prefill_tokens:,}'}"
        f" tokens to prefill); LRU cache in file order would reuse {_pct(s.lru_reuse_ratio)}",
        f"  time              {secs.get('load_model', 0):.1f} s load, {secs.get('read_and_tokenize', 0):.1f} s read+tokenize, "
        f"{secs.get('analyze', 0):.1f} s analyse, {secs.get('generate', 0):.1f} s generate",
    ]
    if d["requests_per_s"] is not None:
        lines.append(f"  throughput        {d['requests_per_s']:,.2f} req/s, {d['output_tokens_per_s']:,.1f} generated tok/s, "
                     f"{d['total_tokens_per_s']:,.1f} total tok/s")
    if s.error_codes:
        lines.append("  errors            " + ", ".join(f"{k}: {v}" for k, v in sorted(s.error_codes.items())))
        lines += [f"    {e}" for e in s.first_errors]
    lines.append(f"  output            {s.output}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- dry run


def resolve_max_model_len(arch, requested: Optional[int]) -> int:
    """The LLM constructor's rule: the model's limit (sliding window included) unless a smaller one is asked."""
    limit = arch.max_position_embeddings
    if arch.sliding_window is not None:
        limit = min(limit, arch.sliding_window)
    if requested is None:
        return limit
    if requested > limit:
        raise ValueError(f"max_model_len={requested} exceeds what the model supports ({limit})")
    return requested


def _dry_run(args: argparse.Namespace, model: str, max_model_len: Optional[int], options: JobOptions) -> int:
    from batchllm.config import CacheConfig, resolve_device, resolve_dtype
    from batchllm.entrypoints.analyze import format_text
    from batchllm.model.arch_config import load_arch_config
    from batchllm.model.tokenizer import load_tokenizer

    try:
        arch = load_arch_config(model)
        tokenizer = load_tokenizer(model)
        max_model_len = resolve_max_model_len(arch, max_model_len)
        device = resolve_device(args.device)
        dtype = resolve_dtype(args.dtype, arch.torch_dtype, device)
        cache = CacheConfig(args.block_size, args.gpu_memory_utilization)
    except (ValueError, OSError) as err:
        _stderr(f"error: {err}")
        return 2
    resume = ResumeState() if args.overwrite else scan_output(args.output, repair=False)
    summary = BatchSummary(output=args.output)
    requests = collect_requests(args.input, tokenizer, arch.vocab_size, max_model_len, resume, options,
                                lambda cid, err: _count_error(summary, cid, err), summary)
    plan = memory_plan(arch, dtype, device, cache, max_model_len, args, requests)
    analysis = analyse(requests, args.block_size, plan["kv_pool_blocks"]) if len(requests) else None
    if analysis is not None:
        stats = analysis.stats.to_dict()
    else:
        stats = _empty_stats(args.block_size)
    report = {"file": args.input, **stats, "lru_cache_tokens": plan["kv_pool_blocks"] * args.block_size,
              "invalid_lines": summary.errors, "errors": summary.first_errors}
    print(format_text(report))
    print(f"  requests              {summary.input_lines:,} lines: {len(requests):,} would run, "
          f"{summary.already_done:,} already in {args.output}, {summary.errors:,} would get error lines")
    for message in summary.first_errors:
        print(f"    {message}")
    print(format_memory_plan(plan))
    return 0


def _empty_stats(block_size: int) -> dict:
    dist = {"count": 0, "min": 0, "p50": 0, "mean": 0.0, "p90": 0, "max": 0}
    return {"prompts": 0, "prompt_tokens": 0, "prefill_tokens": 0, "reuse_ratio": 0.0, "trie_reuse_ratio": 0.0,
            "multi_level": False, "aligned_to_blocks": True, "block_size": block_size, "min_shared_len": block_size,
            "lru_reuse_ratio": None, "lru_cache_blocks": None, "groups": 0, "grouped_prompts": 0,
            "ungrouped_prompts": 0, "group_size": dist, "shared_prefix_len": dist, "group_size_histogram": {},
            "exact": True}


def memory_plan(arch, dtype, device, cache, max_model_len: int, args, requests: CompactRequests) -> dict:
    """Estimated memory use of the job (nothing is loaded; the engine profiles activations at load)."""
    import torch

    dtype_bytes = torch.finfo(dtype).bits // 8
    weights = arch.num_params() * dtype_bytes
    kv_per_token = arch.kv_bytes_per_token(dtype_bytes)
    batched = args.max_num_batched_tokens or 8192
    # Activations of the largest iteration: hidden states, q/k/v, MLP intermediates; logits of sampled rows.
    activations = batched * (6 * arch.hidden_size + arch.q_size + 2 * arch.kv_size + 3 * arch.intermediate_size) \
        * dtype_bytes + min(args.max_num_seqs or batched, batched) * arch.vocab_size * 4
    plan: dict[str, Any] = {"device": str(device), "dtype": str(dtype).replace("torch.", ""),
                            "params": arch.num_params(), "weights_bytes": weights, "kv_bytes_per_token": kv_per_token,
                            "activation_bytes_estimate": activations, "max_model_len": max_model_len,
                            "block_size": cache.block_size}
    if device.type == "cuda":
        _, total = torch.cuda.mem_get_info(device)
        budget = int(total * cache.gpu_memory_utilization) - weights - activations
        plan["device_memory_bytes"] = total
        plan["kv_pool_source"] = f"{cache.gpu_memory_utilization:.2f} x {total / 2**30:.1f} GiB - weights - activations"
    else:
        budget = cache.cpu_kv_cache_bytes
        plan["kv_pool_source"] = "cpu_kv_cache_bytes (CPU default)"
    per_block = kv_per_token * cache.block_size
    plan["kv_pool_bytes"] = max(budget, 0)
    plan["kv_pool_blocks"] = max(budget, 0) // per_block
    lengths = np.diff(requests.offsets)
    out = np.frombuffer(requests.output_budget, dtype=np.int64) if len(requests) else np.zeros(0, np.int64)
    need_per_request = lengths + out
    plan["requests"] = len(requests)
    plan["prompt_tokens"] = int(lengths.sum())
    plan["max_output_tokens"] = int(out.sum())
    mean_need = float(need_per_request.mean()) if len(requests) else 0.0
    pool_tokens = plan["kv_pool_blocks"] * cache.block_size
    plan["concurrent_requests_estimate"] = int(pool_tokens // mean_need) if mean_need else None
    plan["max_num_seqs"] = args.max_num_seqs
    plan["fits_one_request"] = plan["kv_pool_blocks"] >= -(-max_model_len // cache.block_size)
    return plan


def format_memory_plan(p: dict) -> str:
    gib = 2**30
    conc = p["concurrent_requests_estimate"]
    conc_text = "-" if conc is None else f"~{conc:,} requests at their full length"
    if conc is not None and p["max_num_seqs"]:
        conc_text += f" (capped at --max-num-seqs {p['max_num_seqs']})" if conc > p["max_num_seqs"] else ""
    lines = [
        "memory plan (estimate; no model loaded)",
        f"  device / dtype        {p['device']} / {p['dtype']}",
        f"  weights               {p['params'] / 1e6:,.1f} M parameters = {p['weights_bytes'] / gib:.2f} GiB",
        f"  activations           ~{p['activation_bytes_estimate'] / gib:.2f} GiB (largest iteration; profiled at load on GPU)",
        f"  KV cache per token    {p['kv_bytes_per_token'] / 1024:.1f} KiB",
        f"  KV pool               {p['kv_pool_bytes'] / gib:.2f} GiB = {p['kv_pool_blocks']:,} blocks of {p['block_size']} "
        f"tokens ({p['kv_pool_source']})",
        f"  batch                 {p['requests']:,} requests: {p['prompt_tokens']:,} prompt tokens + up to "
        f"{p['max_output_tokens']:,} output tokens",
        f"  concurrency           {conc_text}",
    ]
    if not p["fits_one_request"]:
        lines.append(f"  warning: the KV pool cannot hold one request of max_model_len={p['max_model_len']}; "
                     "lower --max-model-len or give the cache more memory")
    return "\n".join(lines)
