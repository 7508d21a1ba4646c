"""What a batch job did: counts, prefix-sharing statistics, timings; and their one-screen text."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional

from batchllm.batch.openai_format import RequestError

MAX_ERRORS_SHOWN = 10


@dataclass
class BatchSummary:
    """What a job did.

    Token counts follow the result lines' usage: ``prompt_tokens`` counts each line's prompt once,
    ``completion_tokens`` every sample's output (a line with ``n`` samples has n choices). The prefix
    statistics (``prefill_tokens``, ``reuse_ratio``, ``lru_reuse_ratio``) come from the job's analysis, which
    sees a line with n samples as n identical prompts, as the engine runs it (``batch.job.analyse``): so the
    reuse includes the n - 1 extra samples' shared prompt, and both ratios are over every sample's prompt
    tokens. Counting the line once would hide that saving; counting n prompts without their sharing would
    make the engine look like it prefilled every sample.
    """

    input_lines: int = 0  # non-blank lines of the input
    already_done: int = 0  # skipped: their custom_id was in the output already
    to_run: int = 0
    succeeded: int = 0
    errors: int = 0  # error lines written by this run
    error_codes: dict = field(default_factory=dict)
    first_errors: list = field(default_factory=list)
    changed_lines: list = field(default_factory=list)  # done custom_ids whose input line changed (rerun)
    prompt_tokens: int = 0  # of the requests run, once per line
    completion_tokens: int = 0  # of every sample
    prefill_tokens: Optional[int] = None  # after global prefix sharing, every sample's prompt counted
    reuse_ratio: Optional[float] = None
    lru_reuse_ratio: Optional[float] = None
    lru_cache_blocks: Optional[int] = None
    prefix_groups: Optional[int] = None
    seconds: dict = field(default_factory=dict)
    output: Optional[str] = None
    data_parallel: Optional[dict] = None  # replicas, failures, units, round-robin reuse (DataParallelExecutor)

    def count_error(self, custom_id: str, error: RequestError) -> None:
        self.errors += 1
        self.error_codes[error.code] = self.error_codes.get(error.code, 0) + 1
        if len(self.first_errors) < MAX_ERRORS_SHOWN:
            self.first_errors.append(f"{custom_id!r}: {error.code}: {error.message[:300]}")

    def set_analysis(self, analysis) -> None:
        stats = analysis.stats
        self.prefill_tokens = stats.prefill_tokens
        self.reuse_ratio = stats.reuse_ratio
        self.lru_reuse_ratio = stats.lru_reuse_ratio
        self.lru_cache_blocks = stats.lru_cache_blocks
        self.prefix_groups = stats.groups

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        gen = self.seconds.get("generate") or 0.0
        d["requests_per_s"] = self.succeeded / gen if gen else None
        d["output_tokens_per_s"] = self.completion_tokens / gen if gen else None
        d["total_tokens_per_s"] = (self.prompt_tokens + self.completion_tokens) / gen if gen else None
        return d


def _pct(x: Optional[float]) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def format_plan_line(s: BatchSummary) -> str:
    head = f"{s.input_lines:,} lines: {s.to_run:,} to run"
    if s.already_done:
        head += f", {s.already_done:,} already in the output"
    if s.changed_lines:
        head += f" ({len(s.changed_lines):,} rerun: their input line changed)"
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
        f"  time              {secs.get('load_model', secs.get('wait_for_engine', 0)):.1f} s load"
        f"{' (replicas, beyond the reading)' if 'wait_for_engine' in secs and 'load_model' not in secs else ''}, "
        f"{secs.get('read_and_tokenize', 0):.1f} s read+tokenize, "
        f"{secs.get('analyze', 0):.1f} s analyse, {secs.get('generate', 0):.1f} s generate",
    ]
    if d["requests_per_s"] is not None:
        lines.append(f"  throughput        {d['requests_per_s']:,.2f} req/s, {d['output_tokens_per_s']:,.1f} generated tok/s, "
                     f"{d['total_tokens_per_s']:,.1f} total tok/s")
    if s.data_parallel is not None:
        lines += format_data_parallel(s.data_parallel, s.reuse_ratio)
    if s.error_codes:
        lines.append("  errors            " + ", ".join(f"{k}: {v}" for k, v in sorted(s.error_codes.items())))
        lines += [f"    {e}" for e in s.first_errors]
    lines.append(f"  output            {s.output}")
    return "\n".join(lines)


def format_data_parallel(dp: dict, reuse_ratio: Optional[float]) -> list[str]:
    replicas = dp["replicas"]
    lines = [f"  data parallel     {len(replicas)} replicas, {dp['units']} work units ({dp['split_groups']} prefix "
             f"groups split, {dp['extra_prefix_tokens']:,} prefix tokens computed twice); {dp['failed_replicas']} "
             f"replica failures, {dp['rerun_units']} units rerun"]
    if "round_robin_reuse_ratio" in dp:
        lines.append(f"  reuse kept whole  {_pct(reuse_ratio)} with whole prefix groups per replica; rows spread "
                     f"round-robin over {len(replicas)} replicas would reuse {_pct(dp['round_robin_reuse_ratio'])}")
    for r in replicas:
        rate = "-" if r["generated_tokens_per_s"] is None else f"{r['generated_tokens_per_s']:,.1f} generated tok/s"
        restarts = f", {r['restarts']} restarts" if r["restarts"] else ""
        lines.append(f"    replica {r['replica']}: {r['requests']:,} requests, {r['generated_tokens']:,} generated "
                     f"tokens, busy {r['busy_seconds']:.1f} s, {rate}{restarts}")
    return lines


def format_work_plan(plan, prompt_tokens: int, prefill_tokens: int, round_robin_prefill: int) -> str:
    """The data-parallel plan of a dry run: units and estimated cost per replica, reuse whole vs round-robin.

    plan: a ``batch.work_units.WorkPlan``; costs are in prefill-token equivalents."""
    n = plan.num_replicas
    whole = 1 - (prefill_tokens + plan.extra_prefix_tokens) / max(prompt_tokens, 1)
    lines = [f"data-parallel plan ({n} replicas): {plan.num_units:,} work units of whole prefix groups, "
             f"{len(plan.split_groups):,} groups split ({plan.extra_prefix_tokens:,} prefix tokens computed twice); "
             f"estimated imbalance {plan.imbalance:.3f} (makespan / mean replica cost)"]
    for r, (cost, units) in enumerate(zip(plan.replica_costs, plan.replica_units)):
        requests = sum(plan.units[u].num_requests for u in units)
        lines.append(f"  replica {r}: {len(units):,} units, {requests:,} requests, estimated cost {cost:,.0f} "
                     f"({cost / max(plan.total_cost, 1e-9):.1%})")
    lines.append(f"  token reuse: {_pct(whole)} with whole groups per replica; rows spread round-robin over {n} "
                 f"replicas: {_pct(1 - round_robin_prefill / max(prompt_tokens, 1))}")
    return "\n".join(lines)
