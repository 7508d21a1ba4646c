#!/usr/bin/env bash
# Device-tool run for issue 17 on one GPU, in one lease: our engine (one load) times a 4096-request batch
# with one JSON schema against the same batch unconstrained, then n=8 samples on 512 prompts of 1000 tokens;
# then vLLM 0.26.0 times the same n=8 file. xgrammar comes with vLLM's wheels (carried into /root/peer as in
# ../shared/peers/README.md); the grammar's vocabulary is SmolLM2's tokenizer saved to .peer/smollm2-tok.
# usage: OUT=... bash benchmarks/gpu_structured_n.sh        (about 8 minutes; start it with setsid)
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-out}; mkdir -p $OUT
M=benchmarks/models/llama-3.1-8b
if [[ ! -d /root/site/vllm ]]; then
  (cd /root/peer && cat p?? | tar x && python3 -m pip install -q --no-index --no-deps --no-compile --target /root/site ./*.whl)
fi
PYTHONPATH=/root/site:$PWD python3 benchmarks/bench_structured_n.py $M .peer/smollm2-tok $OUT > $OUT/ours.log 2>&1
echo "ours rc=$?"
tail -1 $OUT/ours.log
PYTHONPATH=/root/site:$PWD python3 benchmarks/peer_vllm_n.py $M $OUT/n_samples.jsonl > $OUT/vllm.log 2>&1
echo "vllm rc=$?"
grep '"peer"' $OUT/vllm.log
