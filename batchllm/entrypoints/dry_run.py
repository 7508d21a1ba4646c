"""``run-batch --dry-run``: the prefix analysis and the memory plan of a job, with no model loaded and no
file written (the output is read, not locked or changed)."""

from __future__ import annotations

import argparse
import os
from typing import Optional

from batchllm.batch.collect import collect_requests
from batchllm.batch.job import JobOptions, analyse, stderr_log
from batchllm.batch.memory_plan import format_memory_plan, memory_plan
from batchllm.batch.results_file import InputManifest, OutputRefusedError, ResumeState, manifest_path, scan_output
from batchllm.batch.summary import BatchSummary


def dry_run(args: argparse.Namespace, model: str, max_model_len: Optional[int], options: JobOptions) -> int:
    from batchllm.config import CacheConfig, resolve_device, resolve_dtype, resolve_max_model_len, resolve_quantization
    from batchllm.entrypoints.analyze import format_text
    from batchllm.model.arch_config import load_arch_config
    from batchllm.model.tokenizer import load_tokenizer

    try:
        arch = load_arch_config(model)
        tokenizer = None if args.skip_tokenizer_init else load_tokenizer(model)
        max_model_len = resolve_max_model_len(arch.max_position_embeddings, arch.sliding_window, max_model_len)
        device = resolve_device(args.device)
        dtype = resolve_dtype(args.dtype, arch.torch_dtype, device)
        cache = CacheConfig(args.block_size, args.gpu_memory_utilization, kv_cache_dtype=args.kv_cache_dtype)
        quantization = resolve_quantization(args.quantization, arch.fp8_checkpoint is not None)
        resume, manifest = ResumeState(), None
        if not args.overwrite and os.path.exists(args.output):
            resume, manifest = scan_output(args.output), InputManifest.load(manifest_path(args.output))
    except (ValueError, OSError, OutputRefusedError) as err:
        stderr_log(f"error: {err}")
        return 2
    summary = BatchSummary(output=args.output)
    collected = collect_requests(args.input, tokenizer, arch.vocab_size, max_model_len, resume, manifest,
                                 options.collect_options(), summary.count_error)
    requests = collected.requests
    plan = memory_plan(arch, dtype, device, cache, max_model_len, args.max_num_batched_tokens, args.max_num_seqs,
                       requests, quantization)
    analysis = analyse(requests, args.block_size, plan["kv_pool_blocks"]) if len(requests) else None
    stats = analysis.stats.to_dict() if analysis is not None else _empty_stats(args.block_size)
    report = {"file": args.input, **stats, "lru_cache_tokens": plan["kv_pool_blocks"] * args.block_size,
              "invalid_lines": summary.errors, "errors": summary.first_errors}
    print(format_text(report))
    print(f"  requests              {collected.input_lines:,} lines: {len(requests):,} would run, "
          f"{collected.already_done:,} already in {args.output}, {summary.errors:,} would get error lines")
    for message in summary.first_errors:
        print(f"    {message}")
    if resume.num_not_results or (resume.lines and manifest is None):
        print(f"  warning: {args.output} is not this job's output (see run-batch without --dry-run); it would be refused")
    if collected.changed:
        print(f"  warning: {len(collected.changed):,} finished lines changed in the input since their results were "
              f"written (--changed-lines {options.changed_lines})")
    print(format_memory_plan(plan))
    if args.data_parallel > 1 and analysis is not None:
        print(_work_plan(requests, analysis, args.data_parallel, args.block_size))
    return 0


def _work_plan(requests, analysis, num_replicas: int, block_size: int) -> str:
    import numpy as np

    from batchllm.batch.summary import format_work_plan
    from batchllm.batch.work_units import plan_from_analysis, round_robin_prefill_tokens

    offsets = requests.offsets
    budgets = np.frombuffer(requests.output_budget, dtype=np.int64)
    plan = plan_from_analysis(analysis, np.diff(offsets), budgets, num_replicas)
    round_robin = round_robin_prefill_tokens(requests.tokens, offsets, num_replicas, block_size,
                                             requests.samples_per_request())
    return format_work_plan(plan, analysis.stats.prompt_tokens, analysis.stats.prefill_tokens, round_robin)


def _empty_stats(block_size: int) -> dict:
    dist = {"count": 0, "min": 0, "p50": 0, "mean": 0.0, "p90": 0, "max": 0}
    return {"prompts": 0, "prompt_tokens": 0, "prefill_tokens": 0, "reuse_ratio": 0.0, "trie_reuse_ratio": 0.0,
            "multi_level": False, "aligned_to_blocks": True, "block_size": block_size, "min_shared_len": block_size,
            "lru_reuse_ratio": None, "lru_cache_blocks": None, "groups": 0, "grouped_prompts": 0,
            "ungrouped_prompts": 0, "group_size": dist, "shared_prefix_len": dist, "group_size_histogram": {},
            "exact": True}
