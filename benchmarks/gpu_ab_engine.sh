#!/usr/bin/env bash
# Device-tool run of several engine A/Bs (benchmarks/ab_engine.py), each in its own process and log, then
# the GPU tests named in TESTS; start it with setsid and poll for $R/DONE, as gpu_fp8_vllm.sh does.
# usage: R=/root/res [TESTS="tests/runner/test_cuda_graphs.py ..."] [AB_ARGS="--quantization fp8"] \
#        bash benchmarks/gpu_ab_engine.sh switch:workload:requests:repeats ...
set -uo pipefail
export PYTHONUNBUFFERED=1
R=${R:-out}; mkdir -p $R; rm -f $R/DONE
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader > $R/device.txt 2>&1
git rev-parse --short HEAD > $R/commit.txt 2>/dev/null
if [[ -n "${TESTS:-}" ]]; then
  timeout 300 python3 -m pytest -q -p no:cacheprovider $TESTS > $R/tests.log 2>&1; echo "tests rc=$?" >> $R/summary.txt
fi
for spec in "$@"; do
  IFS=: read -r switch workload requests repeats <<< "$spec"
  log=$R/ab_${switch}_${workload}_${requests}.log
  timeout 540 python3 benchmarks/ab_engine.py --switch $switch --workload $workload --requests $requests \
      --repeats ${repeats:-2} ${AB_ARGS:-} > $log 2>&1
  echo "$spec rc=$?: $(grep '^AB ' $log)" >> $R/summary.txt
done
touch $R/DONE
