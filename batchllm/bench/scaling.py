"""Data-parallel scaling figures (issue 16): throughput at N replicas, scaling efficiency against one, the
reuse each run kept, per-replica busy time; and the same for vLLM run as N processes on 1/N of the file.

Inputs are what the runs write: run-batch's ``--summary-json`` (one per workload and N) and the JSON lines of
``benchmarks/peer_vllm_dp.py`` (one per phase and rank). Throughput is prompt plus generated tokens over the
generation seconds (ours: the summary's ``generate``; vLLM: the last rank's end minus the first's start).
Scaling efficiency at N is throughput(N) / (N x throughput(1)).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Iterable, Optional


@dataclass(frozen=True)
class ScalingRun:
    engine: str
    workload: str
    replicas: int
    seconds: float
    tokens: int  # prompt + generated
    reuse_ratio: Optional[float] = None  # of the job's global analysis
    kept_reuse_ratio: Optional[float] = None  # counting the prefix tokens split groups compute again
    busy_seconds: tuple = ()  # per replica

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds


def run_from_summary(summary: dict, workload: str) -> ScalingRun:
    """A ScalingRun from run-batch's summary JSON (one engine, or --data-parallel N)."""
    dp = summary.get("data_parallel")
    replicas = 1 if dp is None else len(dp["replicas"])
    reuse = summary.get("reuse_ratio")
    kept = reuse
    if reuse is not None and dp is not None and summary.get("prefill_tokens") is not None:
        prompt = summary["prefill_tokens"] / (1 - reuse) if reuse < 1 else None
        if prompt:
            kept = 1 - (summary["prefill_tokens"] + dp["extra_prefix_tokens"]) / prompt
    busy = () if dp is None else tuple(r["busy_seconds"] for r in dp["replicas"])
    return ScalingRun("batchllm", workload, replicas, float(summary["seconds"]["generate"]),
                      int(summary["prompt_tokens"] + summary["completion_tokens"]), reuse, kept, busy)


def runs_from_peer_lines(lines: Iterable[str]) -> list[ScalingRun]:
    """ScalingRuns from peer_vllm_dp.py's output lines (any order, every rank's file together)."""
    phases: dict = {}
    for line in lines:
        line = line.strip()
        if not line.startswith("{"):
            continue
        row = json.loads(line)
        if "replicas" in row:
            phases.setdefault((row["workload"], row["replicas"]), []).append(row)
    runs = []
    for (workload, n), rows in sorted(phases.items()):
        if len(rows) != n:
            raise ValueError(f"vLLM {workload} at N={n}: {len(rows)} ranks reported, expected {n}")
        seconds = max(r["end"] for r in rows) - min(r["start"] for r in rows)
        tokens = sum(r["prompt_tokens"] + r["output_tokens"] for r in rows)
        runs.append(ScalingRun("vllm", workload, n, seconds, tokens,
                               busy_seconds=tuple(r["seconds"] for r in sorted(rows, key=lambda r: r["rank"]))))
    return runs


def scaling_table(runs: list[ScalingRun]) -> list[dict]:
    """One row per (workload, N): both engines' throughput and efficiency, and ours over vLLM's."""
    by_key = {(r.engine, r.workload, r.replicas): r for r in runs}
    rows = []
    for workload, n in sorted({(r.workload, r.replicas) for r in runs}):
        row: dict = {"workload": workload, "replicas": n}
        for engine in ("batchllm", "vllm"):
            run, one = by_key.get((engine, workload, n)), by_key.get((engine, workload, 1))
            if run is None:
                continue
            row[engine] = {"seconds": round(run.seconds, 2), "tokens_per_s": round(run.tokens_per_s),
                           "efficiency": None if one is None else round(run.tokens_per_s / (n * one.tokens_per_s), 3),
                           "busy_seconds": list(run.busy_seconds)}  # fmt: skip
            if engine == "batchllm":
                row[engine].update(reuse_ratio=run.reuse_ratio, kept_reuse_ratio=run.kept_reuse_ratio)
        ours, peer = by_key.get(("batchllm", workload, n)), by_key.get(("vllm", workload, n))
        if ours is not None and peer is not None:
            row["ratio"] = round(ours.tokens_per_s / peer.tokens_per_s, 3)
        rows.append(row)
    return rows


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def markdown(rows: list[dict]) -> str:
    lines = ["| workload | N | ours s | ours tok/s | ours eff. | reuse (kept) | busy per replica s | vLLM s | "
             "vLLM tok/s | vLLM eff. | ours / vLLM |", "|---|---:|---:|---:|---:|---|---|---:|---:|---:|---:|"]
    for row in rows:
        ours, peer = row.get("batchllm", {}), row.get("vllm", {})
        busy = ", ".join(f"{b:.1f}" for b in ours.get("busy_seconds", [])) or "-"
        reuse = f"{_fmt(ours.get('reuse_ratio'), '.3f')} ({_fmt(ours.get('kept_reuse_ratio'), '.3f')})"
        lines.append(f"| {row['workload']} | {row['replicas']} | {_fmt(ours.get('seconds'), '.2f')} | "
                     f"{_fmt(ours.get('tokens_per_s'), ',')} | {_fmt(ours.get('efficiency'), '.3f')} | {reuse} | "
                     f"{busy} | {_fmt(peer.get('seconds'), '.2f')} | {_fmt(peer.get('tokens_per_s'), ',')} | "
                     f"{_fmt(peer.get('efficiency'), '.3f')} | {_fmt(row.get('ratio'), '.2f')} |")
    return "\n".join(lines)
