"""`batchllm report TRACE [TRACE ...]`: plot per-iteration traces side by side (token-batch 'valleys', KV use)."""

from __future__ import annotations

import argparse

from batchllm.engine.trace import load_trace


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("report", help="plot engine traces (tokens per iteration over time, KV blocks in use)")
    p.add_argument("traces", nargs="+", help="trace JSON files written by LLM(..., trace_path=...) or `batchllm bench`")
    p.add_argument("-o", "--output", default="trace.png", help="PNG file to write (default: trace.png)")
    p.add_argument("--title", default=None)
    p.add_argument("--x", choices=["iteration", "time"], default="iteration", help="x axis (default: iteration)")
    return p


def plot_traces(traces: list[dict], output: str, title: str | None = None, x_axis: str = "iteration") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(traces), figsize=(6 * len(traces), 6.5), squeeze=False, sharey="row")
    for col, trace in enumerate(traces):
        label = trace.get("label") or f"run {col + 1}"
        seconds = trace["time_s"][-1] - trace["time_s"][0] if trace["time_s"] else 0.0
        time_s = trace["time_s"] if x_axis == "time" else list(range(len(trace["time_s"])))
        top, bottom = axes[0][col], axes[1][col]
        top.fill_between(time_s, trace["decode_tokens"], step="post", alpha=0.6, label="decode tokens")
        top.fill_between(time_s, [d + p for d, p in zip(trace["decode_tokens"], trace["prefill_tokens"])],
                         trace["decode_tokens"], step="post", alpha=0.6, label="prefill tokens")
        top.set_title(f"{label}: {len(time_s)} iterations, {seconds:.2f} s")
        top.set_ylabel("tokens in iteration")
        top.legend(loc="upper right", fontsize=8)
        bottom.plot(time_s, trace["kv_blocks_used"], label="KV blocks used", drawstyle="steps-post")
        bottom.plot(time_s, trace["kv_blocks_shared"], label="shared by >1 request", drawstyle="steps-post")
        preempt = [t for t, n in zip(time_s, trace["preemptions"]) if n]
        if preempt:
            bottom.plot(preempt, [0] * len(preempt), "rx", label="preemption")
        bottom.set_xlabel("time (s)" if x_axis == "time" else "iteration")
        bottom.set_ylabel("KV blocks")
        bottom.legend(loc="upper right", fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(output, dpi=110)
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    traces = [load_trace(path) for path in args.traces]
    plot_traces(traces, args.output, args.title, args.x)
    print(f"wrote {args.output}")
    return 0
