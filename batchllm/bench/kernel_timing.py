"""Milliseconds per call of a GPU function, for the kernel tables of the check scripts (not for the
engine's benchmarks, which time whole runs)."""

from __future__ import annotations

import time
from typing import Callable

import torch


def ms_per_call(fn: Callable[[], object], reps: int = 20) -> float:
    """Mean ms of `fn` over `reps` calls after one warm-up call: CUDA events around the calls on a GPU (what
    the device spent, launches included), the wall clock on a machine without one."""
    fn()
    if not torch.cuda.is_available():
        start = time.perf_counter()
        for _ in range(reps):
            fn()
        return (time.perf_counter() - start) / reps * 1e3
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps


def graph_ms_per_call(fn: Callable[[], object], reps: int = 20) -> float:
    """ms per call replayed from a CUDA graph: no launch overhead, as in the engine's decode iterations."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()  # warm-up (Triton compiles) outside the capture
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return ms_per_call(graph.replay, reps)
