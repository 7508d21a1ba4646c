#!/usr/bin/env bash
# Device-tool run of the end-to-end table (issue 6): llama-3.1-8b dummy bf16, micro / multilevel / noshare,
# BatchLLM against our vllm-like baseline, plus vLLM's numbers for the same files when they are there.
# usage: bash benchmarks/gpu_suite.sh [micro|multilevel|noshare|realistic|skewed|decode|check|files|all]
#        (all: every workload but decode, about 8 minutes)
#
# vLLM in the same lease (see ../shared/peers/README.md for carrying its wheels into /root/site first):
#   bash benchmarks/gpu_suite.sh files        # writes the workload files to $W (default /root/w)
#   PYTHONPATH=/root/site python3 .peer/tools/run_vllm.py benchmarks/models/llama-3.1-8b $W/*.jsonl | tee $W/vllm.jsonl
#   bash benchmarks/gpu_suite.sh all          # our engine on the same files; vLLM's lines join each table
# The engine compiles its Triton kernel variants and captures its CUDA graphs at start, before the clock.
export PYTHONUNBUFFERED=1
M=benchmarks/models/llama-3.1-8b
W=${W:-/root/w}
OUT=${OUT:-out}
mkdir -p $OUT $W
part=${1:-all}
# part -> workload file and its request count; "decode" (short prompts, 2000-token outputs) is the
# decode-heavy case whose floor is the bandwidth one; "all" runs the three of the table.
declare -A FILE=([micro]=micro-2000-200-16-100 [multilevel]=multilevel [noshare]=noshare [realistic]=realistic
                 [skewed]=skewed [decode]=micro-100-400-1-2000)
declare -A REQUESTS=([micro]=1024 [multilevel]=512 [noshare]=512 [realistic]=2048 [skewed]=1024 [decode]=256)
# configurations per part unless COMPARE is set (e.g. COMPARE=batchllm,batchllm-no-overlap)
declare -A CONFIGS=([micro]=batchllm,batchllm-threshold-1.1,vllm-like
                    [multilevel]=batchllm,batchllm-single-level,vllm-like
                    [noshare]=batchllm,batchllm-threshold-1.1,vllm-like
                    [realistic]=batchllm [skewed]=batchllm
                    [decode]=batchllm,batchllm-threshold-2,vllm-like)
for short in "${!FILE[@]}"; do
  name=${FILE[$short]}
  [[ -f $W/$name.jsonl ]] || python3 benchmarks/workloads.py $name --requests ${REQUESTS[$short]} -o $W/$name.jsonl
done
[[ $part == files ]] && exit 0
peer=(); [[ -f $W/vllm.jsonl ]] && peer=(--peer-results $W/vllm.jsonl)
HF=${HF:-0}  # HF=32: also time transformers generate_batch on the first 32 requests
B="python3 -m batchllm.entrypoints.cli bench --model $M --load-format dummy --dtype bfloat16"
{
  for short in micro multilevel noshare realistic skewed decode; do
    if [[ $part == $short || ($part == all && $short != decode) ]]; then
      mkdir -p $OUT/tr_$short
      timeout 400 $B --input $W/${FILE[$short]}.jsonl --compare ${COMPARE:-${CONFIGS[$short]}} --hf-requests $HF \
          "${peer[@]}" --out $OUT/$short.json --trace-dir $OUT/tr_$short 2>&1 | grep -v "it/s\|^{" | tail -14
    fi
  done
  if [[ $part == check ]]; then
    timeout 200 python3 benchmarks/gpu_engine_check.py --out $OUT 2>&1 | grep -v "it/s" | tail -12
  fi
} | tee $OUT/log_$part.txt
