#!/usr/bin/env bash
# Device-tool run for the attention kernels (issue 5): the GPU test suite with real shapes, then the decode
# benchmarks (paged and prefix-shared). Needs pytest/hypothesis wheels carried in .whl (see the device README).
# usage: bash benchmarks/gpu_kernels.sh     (about 8 minutes; run with kind nvidia-h100-x1 for the table)
export PYTHONUNBUFFERED=1
OUT=${OUT:-out}
mkdir -p $OUT
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
{
  timeout 330 python3 -m pytest tests/attention -q -x 2>&1 | tail -6
  timeout 150 python3 benchmarks/bench_shared_prefix.py --no-sweep 2>&1 | tail -12
} | tee $OUT/log_kernels.txt
