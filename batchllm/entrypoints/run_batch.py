"""``batchllm run-batch -i requests.jsonl -o results.jsonl``: the batch job, OpenAI Batch API format.

The whole input file is read (streaming), tokenized and analysed for shared prefixes before anything runs;
then every valid request goes to the engine at once and each result line is appended to the output file as
its request finishes. Rerunning the same command resumes: custom_ids already in the output are skipped.
A bad request (malformed line, unknown url or parameter, prompt too long, duplicate custom_id) gets an error
line and the rest of the batch runs; the exit status is non-zero only when the job itself could not run.
One job writes an output at a time: a second one is refused before it reads or changes the file.

The job itself is a library, ``batchllm.batch``; this module is its command line.
"""

from __future__ import annotations

import argparse
import json
import signal
from typing import Optional

from batchllm.batch.job import JobOptions, input_problem, model_name, run_batch_job, stderr_log
from batchllm.batch.results_file import OutputLockedError, OutputRefusedError, ResultsFile
from batchllm.batch.summary import format_summary
from batchllm.config import KV_CACHE_DTYPES, QUANTIZATIONS

DEMO_MAX_MODEL_LEN = 2048  # the demo model's context when --model is omitted (as `batchllm generate`)
INT64 = (-(2**63), 2**63 - 1)


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
    p.add_argument("--changed-lines", choices=("refuse", "rerun"), default="refuse",
                   help="on resume, when input lines changed since their results were written: refuse to run "
                        "(default; the ids are listed), or rerun them, dropping their old results")
    p.add_argument("--default-max-tokens", type=int, default=None,
                   help="max_tokens of requests that give none (default: up to max_model_len, as OpenAI)")
    p.add_argument("--max-requests-per-pass", type=int, default=0,
                   help="give the engine at most this many requests at a time (default 0: all at once)")
    p.add_argument("--summary-json", default=None, help="also write the final summary to this JSON file")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    d = p.add_argument_group("data parallelism (Ray)")
    d.add_argument("--data-parallel", type=int, default=1, metavar="N",
                   help="N engine replicas as Ray actors, one GPU each by default; work units of whole prefix "
                        "groups go to whichever asks first, largest first (default 1: one engine, no Ray)")
    d.add_argument("--gpus-per-replica", type=float, default=None, metavar="F",
                   help="GPUs per replica: a fraction puts several on one GPU (each gets that share of its "
                        "memory), 0 runs them on CPU (default: 1 if the cluster has GPUs, else 0)")
    d.add_argument("--ray-address", default=None,
                   help="join this Ray cluster ('auto' as in Ray); default: start a local Ray for the job")
    d.add_argument("--max-replica-restarts", type=int, default=3,
                   help="new actors a replica may get after it dies (default 3); its unfinished work reruns")
    e = p.add_argument_group("engine options")
    e.add_argument("--dtype", default="auto", help="auto (checkpoint dtype on GPU, float32 on CPU), float32, bfloat16, float16")
    e.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    e.add_argument("--load-format", default="auto",
                   help="auto (safetensors, .bin or GGUF), or dummy: random weights of the config's shapes (benchmarks)")
    e.add_argument("--max-model-len", type=int, default=None, help="context length (default: the model's)")
    e.add_argument("--max-num-seqs", type=int, default=256, help="cap on running requests (default 256)")
    e.add_argument("--max-num-batched-tokens", type=int, default=None, help="token budget of one iteration")
    e.add_argument("--gpu-memory-utilization", type=float, default=0.90, help="fraction of GPU memory to use")
    e.add_argument("--seed", type=int, default=0,
                   help="job seed; a sampled request without 'seed' gets one derived from it and its custom_id")
    e.add_argument("--block-size", type=int, default=16, help="KV block size in tokens (power of two)")
    e.add_argument("--kv-cache-dtype", default="auto", choices=tuple(KV_CACHE_DTYPES),
                   help="auto: KV in the model dtype; fp8 (= fp8_e4m3): float8 e4m3 with per-layer scales, twice "
                        "the KV blocks (GPUs of compute capability 8.9+, or the CPU)")
    e.add_argument("--quantization", default=None, choices=[q for q in QUANTIZATIONS if q],
                   help="fp8: the decoder's linear layers in FP8 (weights per channel, quantized at load; activations "
                        "per token; GPUs of compute capability 8.9+, or the CPU's slow reference); default: none, "
                        "or the checkpoint's own FP8")
    e.add_argument("--skip-tokenizer-init", action="store_true",
                   help="load no tokenizer (a model folder without one): token-id prompts only, outputs without text")
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


def _argument_problem(args: argparse.Namespace) -> Optional[str]:
    if args.max_requests_per_pass < 0:
        return "--max-requests-per-pass must be >= 0"
    if args.data_parallel < 1:
        return f"--data-parallel {args.data_parallel}: give the number of replicas, 1 or more"
    if args.gpus_per_replica is not None and args.gpus_per_replica < 0:
        return f"--gpus-per-replica {args.gpus_per_replica}: must be >= 0 (0 runs the replicas on CPU)"
    if args.max_replica_restarts < 0:
        return "--max-replica-restarts must be >= 0"
    if args.default_max_tokens is not None and args.default_max_tokens < 1:
        return "--default-max-tokens must be >= 1"
    if not INT64[0] <= args.seed <= INT64[1]:
        return f"--seed {args.seed} is outside the 64-bit range [-2**63, 2**63 - 1]"
    return input_problem(args.input, args.output)


def run(args: argparse.Namespace) -> int:
    log = stderr_log
    problem = _argument_problem(args)
    if problem is not None:
        log(f"error: {problem}")
        return 2
    model = args.model
    if model is None:
        from batchllm.entrypoints.demo_model import demo_model_path

        try:
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
        served_model_name=args.served_model_name or model_name(model),
        progress=not args.no_progress,
        block_size=args.block_size,
        changed_lines=args.changed_lines,
    )
    if args.dry_run:
        from batchllm.entrypoints.dry_run import dry_run

        return dry_run(args, model, max_model_len, options)

    previous = signal.getsignal(signal.SIGTERM)
    try:
        signal.signal(signal.SIGTERM, _raise_on_sigterm)
    except ValueError:  # not the main thread
        previous = None
    results = None
    try:
        try:
            results = ResultsFile.open(args.output)  # before the model loads: a refused job waits for nothing
        except (OSError, OutputLockedError, OutputRefusedError) as err:
            log(f"error: cannot open the output: {err}")
            return 2
        summary = _load_and_run(args, model, max_model_len, options, results, log)
        if summary is None:
            results.close(failed=True)
            return 2
        results.close()
        log(format_summary(summary))
        if args.summary_json:
            with open(args.summary_json, "w") as f:
                json.dump(summary.to_dict(), f, indent=2)
        return 0
    except OutputRefusedError as err:
        log(f"error: {err}")
        return 2
    except KeyboardInterrupt:
        log(f"\ninterrupted: every finished request is in {args.output}; rerun the same command to resume")
        return 130
    except SystemExit as stop:
        if stop.code == 143:
            log(f"\nterminated: every finished request is in {args.output}; rerun the same command to resume")
        raise
    except OSError as err:  # the output cannot be written (a full disk, a lost mount): the job cannot go on
        log(f"\nerror: {err}\nevery line written before it is in {args.output}; fix the cause and rerun the same "
            "command to resume")
        return 1
    except Exception:
        log(f"\nthe job stopped on an unexpected error (below); every finished request is in {args.output}, "
            "and rerunning the same command resumes")
        raise
    finally:
        if results is not None:
            try:
                results.close(failed=True)  # no-op when closed above; a failed job keeps what it wrote
            except OSError:
                pass
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def llm_kwargs(args, model: str, max_model_len: Optional[int]) -> dict:
    """The ``LLM`` arguments the command line gives (one engine, or each data-parallel replica)."""
    return dict(model=model, dtype=args.dtype, device=args.device, load_format=args.load_format,
                max_model_len=max_model_len, seed=args.seed,
                block_size=args.block_size, gpu_memory_utilization=args.gpu_memory_utilization,
                kv_cache_dtype=args.kv_cache_dtype, quantization=args.quantization,
                max_num_batched_tokens=args.max_num_batched_tokens, max_num_seqs=args.max_num_seqs,
                skip_tokenizer_init=args.skip_tokenizer_init, scheduling=args.scheduling,
                **scheduler_overrides(args))


def uses_ray(args) -> bool:
    return args.data_parallel > 1 or args.ray_address is not None


def data_parallel_options(args):
    from batchllm.distributed.options import DataParallelOptions

    return DataParallelOptions(num_replicas=args.data_parallel, gpus_per_replica=args.gpus_per_replica,
                               ray_address=args.ray_address, max_restarts=args.max_replica_restarts)


def _load_and_run(args, model: str, max_model_len: Optional[int], options: JobOptions, results: ResultsFile, log):
    """Load the model (or start the replicas), run the job; None (after saying why) when it cannot start."""
    import time

    t0 = time.perf_counter()
    kwargs = llm_kwargs(args, model, max_model_len)
    if uses_ray(args):
        from batchllm.distributed import DataParallelExecutor

        log(f"starting {args.data_parallel} replicas of {model} on Ray ...")
        try:
            kwargs.pop("model")
            executor = DataParallelExecutor.start(model, data_parallel_options(args), kwargs, log=log)
            start_seconds = time.perf_counter() - t0
        except (ValueError, OSError, ImportError) as err:
            log(f"error: cannot start the replicas: {err}")
            return None
        if args.trace:
            log("warning: --trace records one engine; it is not written with --data-parallel")
        with executor:
            summary = run_batch_job(executor, args.input, results, options, overwrite=args.overwrite, log=log)
        summary.seconds["start_ray"] = round(start_seconds, 3)  # the replicas load while the input is read
        return summary
    from batchllm import LLM

    log(f"loading {model} ...")
    try:
        llm = LLM(**kwargs)
    except (ValueError, OSError) as err:
        log(f"error: cannot load the model: {err}")
        return None
    load_seconds = time.perf_counter() - t0
    summary = run_batch_job(llm, args.input, results, options, overwrite=args.overwrite, log=log)
    summary.seconds["load_model"] = round(load_seconds, 3)
    if args.trace:
        llm.save_trace(args.trace, label=args.scheduling)
    return summary


def _raise_on_sigterm(signum, frame) -> None:
    raise SystemExit(143)
