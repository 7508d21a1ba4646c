#!/usr/bin/env bash
# Device-tool runs of the end-to-end benchmarks (llama-3.1-8b dummy bf16) and the engine check; results in $OUT.
# usage: bash benchmarks/gpu_suite.sh [micro|noshare|multilevel|check|all]
# (the engine compiles its Triton kernel variants at start, before the clock, as vLLM's start-up does)
export PYTHONUNBUFFERED=1
M=benchmarks/models/llama-3.1-8b
B="python3 -m batchllm.entrypoints.cli bench --model $M --load-format dummy --dtype bfloat16"
OUT=${OUT:-out}
mkdir -p $OUT/tr
part=${1:-all}
{
  if [[ $part == micro || $part == all ]]; then
    timeout 400 $B --workload micro-2000-200-16-100 --requests 1024 --compare batchllm,vllm-like,+prefix-clustering \
        --out $OUT/micro.json --trace-dir $OUT/tr 2>&1 | grep -v "it/s" | tail -8
  fi
  if [[ $part == check || $part == all ]]; then
    timeout 200 python3 benchmarks/gpu_engine_check.py --out $OUT 2>&1 | grep -v "it/s" | tail -12
  fi
  if [[ $part == noshare || $part == all ]]; then
    timeout 400 $B --workload noshare --requests 512 --compare batchllm,vllm-like --out $OUT/noshare.json 2>&1 \
        | grep -v "it/s" | tail -6
  fi
  if [[ $part == multilevel || $part == all ]]; then
    timeout 300 $B --workload multilevel --requests 512 --compare batchllm,vllm-like,batchllm-multilevel \
        --out $OUT/multilevel.json 2>&1 | grep -v "it/s" | tail -7
  fi
} | tee $OUT/log_$part.txt
