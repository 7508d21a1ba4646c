#!/usr/bin/env bash
# Data-parallel scaling on one machine of G GPUs (issue 16), in one lease: vLLM 0.26.0 as G processes
# (one per GPU, started once; phases N = 1, 2, G, each on contiguous 1/N slices of the prefix-sharing file),
# then ours: run-batch with one engine (N = 1) and --data-parallel N (N = 2, G) on the prefix-sharing file
# and on micro; then the table (benchmarks/scaling_report.py).
# Workloads sized so one replica takes 2-4 minutes on an H200: realistic x8192 (150 s measured on one H200,
# 2026-12-03) and micro-2000-200-16-100 x10240 (~135 s: 13.5 s per 1024).
# Needs, copied by earlier calls of the lease: vLLM's wheels in /root/peer and Ray's in /root/peer/ray
# (../shared/peers/README.md: fetch_vllm_wheels.sh; fetch_wheels.sh ray ray==2.60.0 jsonschema ...).
# usage: R=/root/res setsid bash benchmarks/gpu_scaling.sh </dev/null >/root/res.log 2>&1 &   (~22 minutes)
#        then poll for $R/DONE; env: REAL=8192 MICRO=10240 G=<GPUs> SKIP_VLLM=1 SMOKE=1 (CPU check)
set -uo pipefail
export PYTHONUNBUFFERED=1 RAY_AUTH_MODE=disabled
R=${R:-/root/res}; W=${W:-/root/w}; mkdir -p $R/ours $R/vllm $W
REAL=${REAL:-8192}; MICRO=${MICRO:-10240}
step() { echo "$(date +%T) $*" | tee -a $R/steps.txt; }
if [[ -n "${SMOKE:-}" ]]; then  # CPU: the tiny model, CPU replicas, no vLLM
  M=benchmarks/models/tiny-llama G=${G:-2} SKIP_VLLM=1 VOCAB=1000 GPUS_PER_REPLICA=0 MICRO_NAME=micro-64-16-4-4
  EXTRA=(--device cpu --dtype float32 --max-model-len 4096)
else
  M=benchmarks/models/llama-3.1-8b G=${G:-$(nvidia-smi -L | wc -l)} VOCAB=128256 GPUS_PER_REPLICA=1
  MICRO_NAME=micro-2000-200-16-100 EXTRA=(--dtype bfloat16)
  for d in /root/peer /root/peer/ray; do
    [[ -d $d ]] && [[ ! -f $d/.installed ]] && (cd $d && cat p?? | tar x && python3 -m pip install -q --no-index \
      --no-deps --no-compile --target /root/site ./*.whl && touch .installed)
  done
  export PYTHONPATH=/root/site:$PWD
fi
PHASES=1,2,$G; [[ $G -le 2 ]] && PHASES=1,$G
step "G=$G phases $PHASES; workloads realistic x$REAL, $MICRO_NAME x$MICRO"
python3 benchmarks/workloads.py realistic --requests $REAL --vocab $VOCAB -o $W/realistic.jsonl
python3 benchmarks/workloads.py $MICRO_NAME --requests $MICRO --vocab $VOCAB -o $W/micro.jsonl
for w in realistic micro; do  # the same requests as OpenAI batch lines (custom_id, fixed lengths)
  python3 - $W/$w.jsonl $W/$w-batch.jsonl <<'PY'
import json, sys
with open(sys.argv[1]) as src, open(sys.argv[2], "w") as dst:
    for i, line in enumerate(src):
        r = json.loads(line)
        body = {"prompt": r["prompt_token_ids"], "max_tokens": r["max_tokens"], "temperature": 0, "ignore_eos": True}
        dst.write(json.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/completions", "body": body}) + "\n")
PY
done
if [[ -z "${SKIP_VLLM:-}" ]]; then
  step "vllm: $G processes"
  rm -rf $R/sync; pids=()
  for ((k = 0; k < G; k++)); do
    CUDA_VISIBLE_DEVICES=$k python3 benchmarks/peer_vllm_dp.py $M $W/realistic.jsonl --rank $k --world $G \
      --phases $PHASES --sync $R/sync > $R/vllm/rank$k.log 2>&1 &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait $p; done
fi
common=(--model $M --load-format dummy --skip-tokenizer-init --no-progress --overwrite "${EXTRA[@]}")
for w in realistic micro; do
  for n in ${PHASES//,/ }; do
    step "ours $w N=$n"
    dp=(); [[ $n -gt 1 ]] && dp=(--data-parallel $n --gpus-per-replica $GPUS_PER_REPLICA)
    python3 -m batchllm.entrypoints.cli run-batch -i $W/$w-batch.jsonl -o $W/out-$w-n$n.jsonl "${common[@]}" \
      "${dp[@]}" --summary-json $R/ours/$w-n$n.json > $R/ours/$w-n$n.log 2>&1
    echo "rc=$? $(wc -l < $W/out-$w-n$n.jsonl) result lines" >> $R/ours/$w-n$n.log
  done
done
step "table"
python3 benchmarks/scaling_report.py $R | tee $R/table.md
step "done"
touch $R/DONE
