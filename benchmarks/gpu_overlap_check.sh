export PYTHONUNBUFFERED=1 OUT=${OUT:-out}
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
PYTHONPATH=/tmp/site timeout 240 python3 -m pytest tests/runner/test_cuda_graphs.py tests/test_llm_triton_backend.py tests/engine -q -n 6 -p no:cacheprovider 2>&1 | tail -4
bash benchmarks/gpu_suite.sh check 2>&1 | tail -14
COMPARE=batchllm,batchllm-no-overlap bash benchmarks/gpu_suite.sh micro 2>&1 | tail -6
COMPARE=batchllm,batchllm-no-overlap bash benchmarks/gpu_suite.sh noshare 2>&1 | tail -6
