#!/usr/bin/env bash
# Device-tool run for issue 18: the per-iteration breakdown (benchmarks/profile_engine.py) of every suite
# workload on llama-3.1-8b dummy bf16, one engine start per workload, each in its own log.
# usage: OUT=... bash benchmarks/gpu_breakdown.sh [workload ...]   (default: all six, about 8 minutes;
#        start it with setsid and poll, as benchmarks/gpu_fp8_vllm.sh does)
# Extra flags for profile_engine.py (e.g. --quantization fp8) go in PROFILE_ARGS.
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-out}; mkdir -p $OUT
# workload -> request count: half the suite's sizes, so that the profiled second run stays short
declare -A REQUESTS=([micro-2000-200-16-100]=512 [multilevel]=256 [noshare]=256 [realistic]=1024 [skewed]=512
                     [micro-100-400-1-2000]=128)
names=("$@"); [[ ${#names[@]} -eq 0 ]] && names=(micro-2000-200-16-100 multilevel noshare realistic skewed micro-100-400-1-2000)
for name in "${names[@]}"; do
  echo "== $name x${REQUESTS[$name]}"
  timeout 420 python3 benchmarks/profile_engine.py --workload $name --requests ${REQUESTS[$name]} ${PROFILE_ARGS:-} \
      > $OUT/breakdown_$name.log 2>&1
  echo "rc=$?"
  grep -v "it/s\|USDT\|Warning\|warn" $OUT/breakdown_$name.log | tail -22
done
