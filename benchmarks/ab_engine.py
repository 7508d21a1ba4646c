"""A/B timing of one engine switch in one process (device tool): the same workload, the same engine, runs
alternating between the switch's two settings, so that one lease gives a ratio free of card-to-card spread.

usage: python benchmarks/ab_engine.py --switch last-layer-rows|decode-tiles-long-keys|... [--workload micro-2000-200-16-100 --requests 512]
       [--repeats 2] [--quantization fp8] [--kv-cache-dtype fp8] [--device cpu --smoke]
Prints one line per run and a last line: seconds of A (switch on) / seconds of B (off), medians.
"""

from __future__ import annotations

import argparse
import statistics
from typing import Callable

import bench_setup  # noqa: F401  (first: repo on sys.path)

from batchllm import LLM  # noqa: E402
from batchllm.attention.triton.shared_prefix_plan import DECODE_TILES, DEFAULT_DECODE_TILES, set_decode_tiles  # noqa: E402
from batchllm.attention.triton.utils import set_fp8_kv_compute  # noqa: E402
from batchllm.bench.compare import run_config  # noqa: E402
from batchllm.bench.workloads import make_workload  # noqa: E402
from dummy_engine import add_engine_args, dummy_engine  # noqa: E402


def _last_layer_rows(llm: LLM, on: bool) -> None:
    llm.engine.runner.model.last_layer_on_sampled_rows = on


def _decode_tiles(name: str) -> Callable[[LLM, bool], None]:
    def switch(llm: LLM, on: bool) -> None:
        set_decode_tiles(name if on else DEFAULT_DECODE_TILES)
        llm.engine.runner.recapture_decode_graphs()

    return switch


def _fp8_kv_compute(mode: str) -> Callable[[LLM, bool], None]:
    def switch(llm: LLM, on: bool) -> None:
        set_fp8_kv_compute(mode if on else "fp16")
        llm.engine.runner.recapture_decode_graphs()

    return switch


SWITCHES: dict[str, Callable[[LLM, bool], None]] = {
    "last-layer-rows": _last_layer_rows,  # the last layer's o_proj and MLP on the sampled rows only
    # 16-bit decode tiles: on = the named DECODE_TILES entry, off = the default
    **{f"decode-tiles-{name}": _decode_tiles(name) for name in DECODE_TILES if name != DEFAULT_DECODE_TILES},
    # how the kernels read an FP8 cache (with --kv-cache-dtype fp8): on = the named mode, off = widened K/V
    "fp8-kv-qk": _fp8_kv_compute("fp8-qk"),
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--switch", required=True, choices=sorted(SWITCHES))
    parser.add_argument("--workload", default="micro-2000-200-16-100")
    parser.add_argument("--requests", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=2)
    add_engine_args(parser)
    parser.add_argument("--smoke", action="store_true", help="CPU interpreter run (bench_setup reads it)")
    args = parser.parse_args()
    llm = dummy_engine(args)
    workload = make_workload(args.workload, args.requests, llm.engine.runner.arch.vocab_size, seed=0)
    switch = SWITCHES[args.switch]
    run_config(llm, "batchllm", workload)  # warm-up: compiles and allocator growth outside the timings
    seconds: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(args.repeats):
        for on in (True, False):
            switch(llm, on)
            result = run_config(llm, "batchllm", workload)
            seconds[on].append(result.seconds)
            print(f"{args.switch}={'on' if on else 'off'} {workload.name} x{args.requests}: {result.seconds:.3f} s, "
                  f"{result.iterations} iterations", flush=True)
    a, b = statistics.median(seconds[True]), statistics.median(seconds[False])
    print(f"AB {args.switch} {workload.name} x{args.requests}: on {a:.3f} s, off {b:.3f} s, off/on {b / a:.4f}")


if __name__ == "__main__":
    main()
