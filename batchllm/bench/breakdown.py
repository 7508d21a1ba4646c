"""Where a run's device time goes: kernel time by phase (prefill-carrying vs pure-decode iterations, the
sampler) and by kind (GEMM, attention, elementwise, sampler, copies), launched from CUDA graphs or eagerly,
and the time the device sat idle (host gaps). Plain data in, a table out: `benchmarks/profile_engine.py`
turns a torch.profiler run into `KernelRecord`s (each kernel attributed through its launch to the
`record_function` range the engine call ran in), and this module adds them up.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Callable, Iterable

# Substrings (lower case) that name a kernel's kind; the first kind that matches wins.
KERNEL_KINDS = (
    ("attention", ("_shared_prefix_kernel", "_paged_attn_kernel", "_merge_kernel", "_merge_splits_kernel",
                   "flash", "attention")),
    ("gemm", ("gemm", "nvjet", "cutlass", "sm90_xmma", "cublas", "matmul", "scaled_mm", "aten::mm", "aten::addmm",
              "aten::bmm", "aten::linear")),
    ("copy", ("memcpy", "memset", "copy_", "fill_")),
    ("kv write", ("_store_kv_fp8_kernel", "reshape_and_cache", "index_put")),
    ("elementwise", ("_rms_norm", "_silu_and_mul", "_rope_kernel", "_per_token_quant_kernel",
                     "elementwise", "vectorized", "reduce", "index", "cat", "add", "mul", "embedding")),
)  # fmt: skip
PHASES = ("prefill", "decode", "sample")


def kernel_kind(name: str, phase: str = "") -> str:
    """The kind of a kernel (or, on CPU, an operator) by its name; "other" when none matches. Whatever the
    sampler call queued (logits processors and masks too) is "sampler"."""
    if phase == "sample":
        return "sampler"
    low = name.lower()
    for kind, needles in KERNEL_KINDS:
        if any(needle in low for needle in needles):
            return kind
    return "other"


@dataclass(frozen=True)
class KernelRecord:
    """One kernel execution: its name, microseconds on the device, the phase of the engine call that
    launched it ("prefill", "decode", "sample", or "other" outside them) and whether a CUDA graph replay
    launched it."""

    name: str
    microseconds: float
    phase: str
    from_graph: bool


@dataclass(frozen=True)
class Breakdown:
    wall_s: float
    busy_s: float  # union of kernel intervals: when at least one kernel ran
    by_phase_kind: dict[tuple[str, str], float]  # seconds
    graph_s: float
    eager_s: float
    top: list[tuple[str, int, float]]  # (kernel, calls, seconds), largest first

    @property
    def idle_s(self) -> float:
        """Wall time with no kernel running: host work the GPU waited for (launch gaps, scheduling)."""
        return max(0.0, self.wall_s - self.busy_s)

    def table(self) -> str:
        kinds = sorted({k for _, k in self.by_phase_kind}, key=lambda k: -sum(
            v for (_, kk), v in self.by_phase_kind.items() if kk == k))  # fmt: skip
        phases = [p for p in (*PHASES, "other") if any(pp == p for pp, _ in self.by_phase_kind)]
        total = sum(self.by_phase_kind.values()) or 1.0
        lines = [f"{'seconds':<12}" + "".join(f"{k:>12}" for k in kinds) + f"{'all':>12}{'share':>8}"]
        for phase in phases:
            row = [self.by_phase_kind.get((phase, k), 0.0) for k in kinds]
            lines.append(f"{phase:<12}" + "".join(f"{v:>12.3f}" for v in row) + f"{sum(row):>12.3f}"
                         f"{sum(row) / total:>8.1%}")  # fmt: skip
        lines.append(f"wall {self.wall_s:.3f} s, device busy {self.busy_s:.3f} s, idle (host gaps) {self.idle_s:.3f} s "
                     f"({self.idle_s / self.wall_s if self.wall_s else 0:.1%}); kernels from CUDA graphs "
                     f"{self.graph_s:.3f} s, eager {self.eager_s:.3f} s")  # fmt: skip
        lines.append(f"{'kernel':<70}{'calls':>8}{'seconds':>9}{'share':>7}")
        lines += [f"{name[:70]:<70}{calls:>8}{s:>9.3f}{s / total:>7.1%}" for name, calls, s in self.top]
        return "\n".join(lines)


def busy_seconds(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of [start, end) intervals given in microseconds, in seconds."""
    busy, reach = 0.0, float("-inf")
    for start, end in sorted(intervals):
        if end <= reach:
            continue
        busy += end - max(start, reach)
        reach = end
    return busy / 1e6


def summarize(records: list[KernelRecord], wall_s: float, intervals: list[tuple[float, float]], top: int = 15) -> Breakdown:
    """Add the records up by (phase, kind), by graph vs eager, and by kernel name."""
    by_phase_kind: dict[tuple[str, str], float] = defaultdict(float)
    by_name: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    graph = eager = 0.0
    for r in records:
        s = r.microseconds / 1e6
        by_phase_kind[(r.phase, kernel_kind(r.name, r.phase))] += s
        by_name[r.name][0] += 1
        by_name[r.name][1] += s
        if r.from_graph:
            graph += s
        else:
            eager += s
    ranked = sorted(((n, int(c), s) for n, (c, s) in by_name.items()), key=lambda x: -x[2])[:top]
    return Breakdown(wall_s, busy_seconds(intervals), dict(by_phase_kind), graph, eager, ranked)


def device_kernel_records(
    events: Iterable[Any], phase_of: Callable[[Any], str]
) -> tuple[list[KernelRecord], list[tuple[float, float]]]:  # fmt: skip
    """The device events of a torch.profiler run (each with `id`, `name`, `device_type`, `time_range`) as
    records and [start, end) microseconds. A kernel is attributed through the CPU runtime call that
    launched it (the event with its correlation id: cudaLaunchKernel, cuLaunchKernel for Triton,
    cudaGraphLaunch for a replay) to the phase `phase_of` gives that call. A kernel whose launch is not in
    the trace takes the phase of the kernel before it on the device.

    Not through the profiler's `kernels` lists: those hold only kernels launched inside an aten operator,
    which on an H200 (2026-12-03) left out every Triton kernel and every graph replay, 45 % of the busy time.
    The device-side spans of `record_function` ranges are left out (counted as kernels, they doubled the total).
    """
    events = list(events)
    cpu = [e for e in events if e.device_type.name == "CPU"]
    launches = {e.id: e for e in cpu if e.name.startswith("cu")}
    # record_function ranges also appear on the device's timeline, spanning the kernels they queued: not kernels
    ranges = {e.name for e in cpu if getattr(e, "is_user_annotation", False)}
    device = sorted((e for e in events if e.device_type.name == "CUDA" and e.name not in ranges
                     and not getattr(e, "is_user_annotation", False)), key=lambda e: e.time_range.start)  # fmt: skip
    records, intervals, phase = [], [], "other"
    for kernel in device:
        launch = launches.get(kernel.id)
        if launch is not None:
            phase = phase_of(launch)
        from_graph = launch is not None and "GraphLaunch" in launch.name
        start, end = kernel.time_range.start, kernel.time_range.end
        records.append(KernelRecord(kernel.name, end - start, phase, from_graph))
        intervals.append((start, end))
    return records, intervals
