#!/usr/bin/env bash
# Device-tool run for the attention kernels (issue 5): the GPU tests with real shapes (attention kernels,
# CUDA graphs of decode batches), then the decode benchmarks (paged and prefix-shared).
# Needs pytest, hypothesis and pytest-xdist wheels carried in .whl (see the device README).
# usage: bash benchmarks/gpu_kernels.sh     (about 5 minutes; run with kind nvidia-h100-x1 for the table)
export PYTHONUNBUFFERED=1
OUT=${OUT:-out}
mkdir -p $OUT
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
{
  # Workers compile Triton kernels in parallel (compiling, not the GPU, is what takes the time here).
  timeout 300 python3 -m pytest tests/attention tests/runner/test_cuda_graphs.py -q -n 12 -p no:cacheprovider 2>&1 \
    | tail -8
  timeout 200 python3 benchmarks/bench_shared_prefix.py --no-sweep 2>&1 | tail -12
} | tee $OUT/log_kernels.txt
