#!/usr/bin/env bash
# One device call: end-to-end benchmarks (llama-3.1-8b dummy bf16) + the engine check. Results in $OUT.
# usage (device tool): bash benchmarks/gpu_suite.sh
export PYTHONUNBUFFERED=1
M=benchmarks/models/llama-3.1-8b
B="python3 -m batchllm.entrypoints.cli bench --model $M --load-format dummy --dtype bfloat16"
mkdir -p $OUT/tr
{
  timeout 190 $B --workload micro-2000-200-16-100 --requests 1024 --compare batchllm,vllm-like,+prefix-clustering \
      --out $OUT/micro.json --trace-dir $OUT/tr 2>&1 | grep -v "it/s" | tail -8
  timeout 130 $B --workload noshare --requests 512 --compare batchllm,vllm-like --out $OUT/noshare.json 2>&1 \
      | grep -v "it/s" | tail -6
  timeout 110 $B --workload multilevel --requests 512 --compare batchllm,vllm-like --out $OUT/multilevel.json 2>&1 \
      | grep -v "it/s" | tail -6
} | tee $OUT/log.txt
