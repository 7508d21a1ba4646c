#!/usr/bin/env bash
# Device-tool run for issue 19 on one H200, in one lease: our engine on llama-3.1-8b dummy weights (bf16,
# FP8 linears, FP8 KV cache) on micro-2000-200-16-100 x1024 and realistic x2048, then vLLM 0.26.0 on the
# same files with quantization="fp8" and, separately, kv_cache_dtype="fp8"; then our kernels check, SmolLM2
# accuracy (bf16 vs FP8) and llama-3.1-70b in FP8; vLLM bf16 last, if the lease lasts.
# Needs, copied by earlier calls of the lease: vLLM's wheels in /root/peer (../shared/peers/README.md) and
# the SmolLM2 GGUF in chunks plus the gguf wheel in /root/gg (split -b 58M <gguf> .peer/gg/p).
# usage: R=/root/res setsid bash benchmarks/gpu_fp8_vllm.sh </dev/null >/root/res.log 2>&1 &   (~20 minutes)
set -uo pipefail
export PYTHONUNBUFFERED=1
R=${R:-/root/res}; W=/root/w; mkdir -p $R $W
M=benchmarks/models/llama-3.1-8b
step() { echo "$(date +%T) $*" | tee -a $R/steps.txt; }
if [[ ! -d /root/site/vllm ]]; then
  (cd /root/peer && cat p?? | tar x && python3 -m pip install -q --no-index --no-deps --no-compile --target /root/site ./*.whl)
  python3 -m pip install -q --no-index --no-deps --no-compile --target /root/site /root/gg/gguf-*.whl
fi
[[ -f /root/smollm2.gguf ]] || cat /root/gg/pa? > /root/smollm2.gguf
export PYTHONPATH=/root/site:$PWD
MICRO=$W/micro-2000-200-16-100-x1024.jsonl REAL=$W/realistic-x2048.jsonl
python3 benchmarks/workloads.py micro-2000-200-16-100 --requests 1024 -o $MICRO
python3 benchmarks/workloads.py realistic --requests 2048 -o $REAL
step "ours 8b"
python3 benchmarks/gpu_fp8_check.py $R/ours8b --parts speed_8b_bf16,speed_8b_fp8,speed_8b_fp8kv --workload-dir $W \
  --budget-s 900 > $R/ours8b.log 2>&1
step "vllm fp8"
python3 benchmarks/peer_vllm.py $M --quantization fp8 $MICRO $REAL > $R/vllm_fp8.log 2>&1
step "vllm kv fp8"
python3 benchmarks/peer_vllm.py $M --kv-cache-dtype fp8 $MICRO $REAL > $R/vllm_kvfp8.log 2>&1
step "ours checks"
python3 benchmarks/gpu_fp8_check.py $R/checks --parts kernels,accuracy,speed_70b_fp8 --smollm2 /root/smollm2.gguf \
  --budget-s 600 > $R/checks.log 2>&1
step "vllm bf16"
python3 benchmarks/peer_vllm.py $M $MICRO $REAL > $R/vllm_bf16.log 2>&1
step "done"
touch $R/DONE
