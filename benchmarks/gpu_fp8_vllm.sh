#!/usr/bin/env bash
# Device-tool run for issue 19 on one GPU, in one lease: our engine on llama-3.1-8b dummy weights on
# micro-2000-200-16-100 x1024 and realistic x2048, then vLLM 0.26.0 on the same files, each vLLM
# configuration one engine (its start, ~3 minutes of torch.compile and graph capture, is not timed).
# Defaults (the 2026-12-03 lease): ours bf16 / FP8 linears / FP8 KV; vLLM quantization="fp8", then
# kv_cache_dtype="fp8", then bf16; our kernels check, SmolLM2 accuracy and llama-3.1-70b in FP8 last.
# Environment, to run less (a lease has 30 minutes of device time):
#   OURS_PARTS   gpu_fp8_check.py parts for our engines (e.g. add speed_8b_fp8kv_dots, FP8 dots)
#   VLLM_CONFIGS space-separated vLLM configurations among fp8, kvfp8, fp8+kvfp8, bf16
#   CHECKS=0     skip the kernels / accuracy / 70B part (it needs the SmolLM2 GGUF and gguf wheel)
#   ATTN=1       first: the FP8-KV kernel tests on the GPU and the prefix-shared kernel benchmark over
#                an FP8 cache (widened vs FP8 dots)
# Needs, copied by earlier calls of the lease: vLLM's wheels in /root/peer (../shared/peers/README.md) and,
# for CHECKS, the SmolLM2 GGUF in chunks plus the gguf wheel in /root/gg (split -b 58M <gguf> .peer/gg/p).
# usage: R=/root/res setsid bash benchmarks/gpu_fp8_vllm.sh </dev/null >/root/res.log 2>&1 &   (~20 minutes)
set -uo pipefail
export PYTHONUNBUFFERED=1
R=${R:-/root/res}; W=/root/w; mkdir -p $R $W
OURS_PARTS=${OURS_PARTS:-speed_8b_bf16,speed_8b_fp8,speed_8b_fp8kv}
VLLM_CONFIGS=${VLLM_CONFIGS:-fp8 kvfp8 bf16}
CHECKS=${CHECKS:-1}; ATTN=${ATTN:-0}
M=benchmarks/models/llama-3.1-8b
step() { echo "$(date +%T) $*" | tee -a $R/steps.txt; }
if [[ ! -d /root/site/vllm ]]; then
  (cd /root/peer && cat p?? | tar x && python3 -m pip install -q --no-index --no-deps --no-compile --target /root/site ./*.whl)
fi
if [[ $CHECKS == 1 ]]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /root/site /root/gg/gguf-*.whl
  [[ -f /root/smollm2.gguf ]] || cat /root/gg/pa? > /root/smollm2.gguf
fi
export PYTHONPATH=/root/site:$PWD
MICRO=$W/micro-2000-200-16-100-x1024.jsonl REAL=$W/realistic-x2048.jsonl
python3 benchmarks/workloads.py micro-2000-200-16-100 --requests 1024 -o $MICRO
python3 benchmarks/workloads.py realistic --requests 2048 -o $REAL
if [[ $ATTN == 1 ]]; then
  step "attention over an FP8 cache"
  python3 -m pytest -q -p no:cacheprovider tests/attention/test_fp8_kv_kernels.py > $R/attn_tests.log 2>&1
  python3 benchmarks/bench_shared_prefix.py --kv-fp8 --degrees 16,4,1 --batches 448,224 --prefix 2000 \
    --distinct 256 --no-sweep > $R/attn_bench.log 2>&1
fi
step "ours 8b"
python3 benchmarks/gpu_fp8_check.py $R/ours8b --parts $OURS_PARTS --workload-dir $W --budget-s 900 > $R/ours8b.log 2>&1
for c in $VLLM_CONFIGS; do
  step "vllm $c"
  case $c in
    fp8) flags="--quantization fp8" ;;
    kvfp8) flags="--kv-cache-dtype fp8" ;;
    fp8+kvfp8) flags="--quantization fp8 --kv-cache-dtype fp8" ;;
    *) flags="" ;;
  esac
  python3 benchmarks/peer_vllm.py $M $flags $MICRO $REAL > $R/vllm_$c.log 2>&1
done
if [[ $CHECKS == 1 ]]; then
  step "ours checks"
  python3 benchmarks/gpu_fp8_check.py $R/checks --parts kernels,accuracy,speed_70b_fp8 --smollm2 /root/smollm2.gguf \
    --budget-s 600 > $R/checks.log 2>&1
fi
step "done"
touch $R/DONE
