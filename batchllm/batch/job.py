"""The batch job: a request file through an ``LLM`` into a locked, resumable results file.

Order of a run: lock the output (``ResultsFile.open``; a refused job has changed nothing), scan it, read and
check the whole input (error lines wait in a spool), decide whether the output may be resumed (result lines
only, from this input, no line edited since unless ``changed_lines="rerun"``), and only then change the
output: cut a torn last line, write the manifest, append the error lines, and run. Each finished request's
line is appended at once, so a kill loses nothing already written and a rerun resumes.

Memory: the engine holds a Python request (with its token list) for every request it is given: all of them
by default, or ``max_requests_per_pass`` at a time (passes follow the prefix groups, so a group stays whole).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterator, Optional, Union

from batchllm.batch.collect import CHANGED_LINES_POLICIES, CollectOptions, collect_requests
from batchllm.batch.openai_format import RequestError, error_line, internal_error, success_line
from batchllm.batch.results_file import (
    InputManifest,
    OutputRefusedError,
    ResultsFile,
    ResumeState,
    encode_line,
    manifest_path,
)
from batchllm.batch.executor import LocalExecutor, RequestExecutor
from batchllm.batch.store import CompactRequests
from batchllm.batch.summary import BatchSummary, format_plan_line

if TYPE_CHECKING:
    from batchllm.llm import LLM

Log = Callable[[str], None]
MAX_IDS_SHOWN = 10


def stderr_log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass
class JobOptions:
    seed: int = 0
    default_max_tokens: Optional[int] = None
    max_requests_per_pass: int = 0  # 0: every request at once
    served_model_name: str = "model"
    progress: bool = True
    block_size: int = 16
    changed_lines: str = "refuse"  # a finished line edited since its result was written: "refuse" or "rerun"

    def __post_init__(self) -> None:
        if self.changed_lines not in CHANGED_LINES_POLICIES:
            raise ValueError(f"changed_lines={self.changed_lines!r}: use one of {CHANGED_LINES_POLICIES}")
        if self.max_requests_per_pass < 0:
            raise ValueError("max_requests_per_pass must be >= 0 (0: all at once)")
        if self.default_max_tokens is not None and self.default_max_tokens < 1:
            raise ValueError("default_max_tokens must be >= 1")

    def collect_options(self) -> CollectOptions:
        return CollectOptions(self.seed, self.default_max_tokens, self.progress, self.changed_lines)


def input_problem(input_path: str, output_path: Optional[str] = None) -> Optional[str]:
    """Why ``input_path`` cannot be a job's input (None when it can)."""
    if not os.path.exists(input_path):
        return f"input file {input_path!r} does not exist"
    if os.path.isdir(input_path):
        return f"input {input_path!r} is a directory; give the JSONL file"
    if not os.path.isfile(input_path):
        return (f"input {input_path!r} is not a regular file (a FIFO or device?); run-batch reads its input more "
                "than once when it resumes: write it to a file first")
    if output_path is not None and os.path.exists(output_path) and os.path.samefile(input_path, output_path):
        return f"the output {output_path!r} is the input file; give another -o"
    return None


def _ids(ids) -> str:
    ids = list(ids)
    shown = ", ".join(repr(i) for i in ids[:MAX_IDS_SHOWN])
    return shown + (f" and {len(ids) - MAX_IDS_SHOWN:,} more" if len(ids) > MAX_IDS_SHOWN else "")


def _resume_state(results: ResultsFile, overwrite: bool, log: Log) -> tuple[ResumeState, Optional[InputManifest]]:
    """What the locked output holds, refusing an output that is not this kind of job's results."""
    if overwrite:
        return ResumeState(), None
    resume = results.scan()
    if resume.num_not_results:
        where = "; ".join(f"line {n}: {why}" for n, why in resume.not_results)
        raise OutputRefusedError(
            f"{results.path} has {resume.num_not_results:,} lines that are not run-batch result lines ({where}); "
            "it is not this job's output: give another -o, or --overwrite to replace it")
    manifest = InputManifest.load(manifest_path(results.path))
    if resume.lines and manifest is None:
        raise OutputRefusedError(
            f"{results.path} holds {resume.lines:,} result lines but no manifest ({manifest_path(results.path)}) "
            "says what they were computed from; give another -o, or --overwrite to start it over")
    if resume.lines:
        log(f"resuming: {resume.lines:,} lines already in {results.path}")
    if resume.truncated_bytes:
        log(f"  cutting off a torn last line ({resume.truncated_bytes} bytes) left by an interrupted run")
    return resume, manifest


def run_batch_job(engine: Union["LLM", RequestExecutor], input_path: str, results: ResultsFile, options: JobOptions,
                  overwrite: bool = False, log: Log = stderr_log) -> BatchSummary:
    """Run ``input_path`` through ``engine`` (an ``LLM``, or an executor such as data-parallel replicas) into
    the locked ``results`` (resumed unless ``overwrite``)."""
    problem = input_problem(input_path, results.path)
    if problem is not None:
        raise ValueError(problem)
    executor = engine if hasattr(engine, "execute") else LocalExecutor(engine, options.max_requests_per_pass)
    facts = executor.facts
    summary = BatchSummary(output=results.path)
    resume, manifest = _resume_state(results, overwrite, log)
    tokenizer = facts.tokenizer
    t0 = time.perf_counter()
    with tempfile.TemporaryFile(prefix="batchllm-errors-") as spool:
        def emit_error(custom_id: str, error: RequestError) -> None:
            spool.write(encode_line(error_line(custom_id, error)))
            summary.count_error(custom_id, error)

        collected = collect_requests(input_path, tokenizer, facts.vocab_size, facts.max_model_len,
                                     resume, manifest, options.collect_options(), emit_error, facts.structured)
        _check_belongs_here(results.path, resume, collected, options, log)
        # Decided: from here on the output changes.
        if overwrite:
            results.truncate()
        else:
            results.repair(resume)
        kept = {} if manifest is None else {cid: h for cid, h in manifest.line_hashes.items()
                                            if cid in resume.done and cid not in collected.line_hashes}
        InputManifest(os.path.abspath(input_path), {**kept, **collected.line_hashes},
                      facts.model).save(manifest_path(results.path))
        if collected.changed:
            results.rewrite_without(set(collected.changed))
        spool.seek(0)
        for line in spool:
            results.write_line(line)
    summary.input_lines, summary.already_done = collected.input_lines, collected.already_done
    summary.changed_lines = collected.changed
    requests = collected.requests
    t1 = time.perf_counter()
    summary.seconds["read_and_tokenize"] = round(t1 - t0, 3)
    summary.to_run = len(requests)
    analysis = None
    if len(requests):
        kv_blocks = executor.kv_blocks()  # replicas started elsewhere may still be loading: wait for one
        summary.seconds["wait_for_engine"] = round(time.perf_counter() - t1, 3)
        t1 = time.perf_counter()
        analysis = analyse(requests, options.block_size, kv_blocks)
        summary.set_analysis(analysis)
    summary.seconds["analyze"] = round(time.perf_counter() - t1, 3)
    log(format_plan_line(summary))
    t2 = time.perf_counter()
    # the text of a top_logprobs alternative (decoded only for requests that asked for alternatives)
    token_text = (lambda token_id: tokenizer.decode([token_id])) if tokenizer is not None else None
    for i, output in _with_progress(executor.execute(requests, analysis), len(requests), options, summary):
        custom_id = requests.custom_ids[i]
        try:
            if output.error is not None:
                raise RuntimeError(output.error)
            token_texts = None  # per completion (n samples: n choices)
            if tokenizer is not None and any(c.logprobs is not None for c in output.outputs):
                token_texts = [[tokenizer.decode([t]) for t in c.token_ids] if c.logprobs is not None else None
                               for c in output.outputs]
            line = success_line(custom_id, requests.kind(i), requests.model(i) or options.served_model_name,
                                output, token_texts, token_text=token_text)
        except Exception as err:  # this request's result cannot be written: its error line instead
            error = internal_error("generation" if output.error is not None else "writing the result", err)
            results.write(error_line(custom_id, error))
            summary.count_error(custom_id, error)
            continue
        results.write(line)
        summary.succeeded += 1
        summary.prompt_tokens += len(output.prompt_token_ids)  # once per line, as the line's usage counts it
        summary.completion_tokens += sum(len(c.token_ids) for c in output.outputs)  # every sample's
    summary.seconds["generate"] = round(time.perf_counter() - t2, 3)
    executor.report(summary)
    return summary


def _check_belongs_here(path: str, resume: ResumeState, collected, options: JobOptions, log: Log) -> None:
    if resume.done and not any(cid in collected.line_hashes for cid in resume.done):
        raise OutputRefusedError(f"none of the {len(resume.done):,} custom_ids in {path} is in this input: it holds "
                                 "another job's results; give another -o, or --overwrite to replace it")
    if collected.changed and options.changed_lines == "refuse":
        raise OutputRefusedError(
            f"{len(collected.changed):,} lines of the input changed since their results were written to {path}: "
            f"{_ids(collected.changed)}; rerun them with --changed-lines rerun (their old results are dropped), "
            "or restore the input")
    if collected.changed:
        log(f"  rerunning {len(collected.changed):,} requests whose input line changed: {_ids(collected.changed)}")
    gone = [cid for cid in resume.done if cid not in collected.line_hashes]
    if gone:
        log(f"  warning: {len(gone):,} results in {path} have no line in this input any more: {_ids(gone)}; kept")


def analyse(requests: CompactRequests, block_size: int, lru_cache_blocks: Optional[int]):
    """The prefix analysis of the requests, one entry per request (line).

    A line with ``n`` samples runs as n engine requests of one prompt, so it is analysed as n identical
    prompts (``prefix.repeat_prompts``): the statistics (prompts, prompt tokens, tokens to prefill, reuse
    ratio, LRU) count every sample, and the n - 1 extra samples' shared prompt shows as reuse, as it is in
    the engine. Groups and request_group are mapped back to lines (``prefix.collapse_repeats``). The
    expansion copies the tokens of the whole file once, for the analysis only; files with n = 1 throughout
    are analysed as they are.
    """
    from batchllm.prefix import analyze_prefixes, collapse_repeats, repeat_prompts

    kwargs = dict(block_size=block_size, lru_cache_blocks=lru_cache_blocks or None)
    samples = requests.samples_per_request()
    if not len(samples) or int(samples.max()) == 1:
        return analyze_prefixes(requests.build(), **kwargs)
    return collapse_repeats(analyze_prefixes(repeat_prompts(requests.build(), samples), **kwargs), samples)


def _with_progress(outputs: Iterator, total: int, options: JobOptions, summary: BatchSummary) -> Iterator:
    """One progress bar over the outputs, whichever executor makes them."""
    from tqdm.auto import tqdm

    bar = tqdm(total=total, unit="req", desc="requests", disable=not options.progress or not total,
               dynamic_ncols=True, smoothing=0.1)
    start = time.perf_counter()
    last_postfix = 0.0
    try:
        for item in outputs:
            yield item
            bar.update(1)
            now = time.perf_counter()
            if now - last_postfix >= 0.5:
                last_postfix = now
                elapsed = max(now - start, 1e-9)
                bar.set_postfix_str(f"{summary.completion_tokens / elapsed:,.0f} out tok/s, "
                                    f"{(summary.prompt_tokens + summary.completion_tokens) / elapsed:,.0f} tok/s, "
                                    f"{summary.errors} errors", refresh=False)
    finally:
        close = getattr(outputs, "close", None)
        if close is not None:
            close()
        bar.close()


def model_name(model: str) -> str:
    """The served model name a path gives: the folder's or file's name, without .gguf."""
    name = os.path.basename(os.path.normpath(model))
    return name[:-5] if name.endswith(".gguf") else name


def run_batch_file(engine: Union["LLM", RequestExecutor, str], input_path: str, output_path: str,
                   overwrite: bool = False, log: Log = stderr_log, *, llm_kwargs: Optional[dict] = None,
                   **options) -> BatchSummary:
    """Python API: run ``input_path`` through ``engine``, appending to (resuming) ``output_path``.

    engine: a loaded ``LLM``; a model path (loaded here, with ``llm_kwargs`` as its other ``LLM``
    arguments); or an executor such as ``batchllm.distributed.DataParallelExecutor.start(model, ...)``
    (N replicas over Ray). options: JobOptions fields (seed, default_max_tokens, max_requests_per_pass,
    served_model_name, progress, block_size, changed_lines). Raises OutputLockedError while another job
    writes the output, and OutputRefusedError when the output is not this job's to resume (the file is
    then left as it was).
    """
    if isinstance(engine, str):
        from batchllm.llm import LLM

        engine = LLM(engine, **(llm_kwargs or {}))
    facts = engine.facts if hasattr(engine, "execute") else LocalExecutor(engine).facts
    options.setdefault("served_model_name", model_name(facts.model))
    options.setdefault("block_size", facts.block_size)
    opts = JobOptions(**options)
    with ResultsFile.open(output_path) as results:
        return run_batch_job(engine, input_path, results, opts, overwrite=overwrite, log=log)
