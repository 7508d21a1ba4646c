#!/usr/bin/env bash
# Device-tool run for data parallelism on ONE GPU (issue 15): the same prefix-sharing batch through
# run-batch with one engine, then with 2 Ray replicas of half a GPU each. Not a scaling figure (both
# replicas share one card); it checks that every result comes back and records the two throughputs.
# Ray travels as wheels (../shared/peers/fetch_wheels.sh ray ...) installed into /root/site first.
# usage: OUT=... bash benchmarks/gpu_data_parallel.sh [requests]      (about 5 minutes)
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=/root/site${PYTHONPATH:+:$PYTHONPATH} RAY_AUTH_MODE=disabled
N=${1:-2048}
M=benchmarks/models/llama-3.1-8b
W=${W:-/root/w}; OUT=${OUT:-out}; mkdir -p $W $OUT
python3 benchmarks/workloads.py micro-2000-200-16-100 --requests $N -o $W/micro.jsonl
# As OpenAI batch lines with custom_ids; ignore_eos gives the fixed lengths the benchmarks use.
python3 - "$W/micro.jsonl" "$W/batch.jsonl" <<'PY'
import json, sys
with open(sys.argv[1]) as src, open(sys.argv[2], "w") as dst:
    for i, line in enumerate(src):
        r = json.loads(line)
        body = {"prompt": r["prompt_token_ids"], "max_tokens": r["max_tokens"], "temperature": 0, "ignore_eos": True}
        dst.write(json.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/completions", "body": body}) + "\n")
PY
common=(--model $M --load-format dummy --dtype bfloat16 --skip-tokenizer-init --no-progress --overwrite)
t0=$(date +%s.%N)
python3 -m batchllm.entrypoints.cli run-batch -i $W/batch.jsonl -o $W/one.jsonl "${common[@]}" \
    --summary-json $OUT/one.json > $OUT/one.log 2>&1; echo "one rc=$?"
t1=$(date +%s.%N)
python3 -m batchllm.entrypoints.cli run-batch -i $W/batch.jsonl -o $W/two.jsonl "${common[@]}" --data-parallel 2 \
    --gpus-per-replica 0.5 --summary-json $OUT/two.json > $OUT/two.log 2>&1; echo "two rc=$?"
t2=$(date +%s.%N)
tail -12 $OUT/two.log
python3 - $W $OUT $t0 $t1 $t2 <<'PY'
import json, sys
w, out, t0, t1, t2 = sys.argv[1], sys.argv[2], *map(float, sys.argv[3:])
def results(p):
    return {r["custom_id"]: r for r in map(json.loads, open(p))}
one, two = results(f"{w}/one.jsonl"), results(f"{w}/two.jsonl")
same = sum(1 for k in one if k in two and one[k]["response"]["body"]["choices"][0]["text"] == two[k]["response"]["body"]["choices"][0]["text"])
print(f"results: one {len(one)}, two {len(two)}, same ids {one.keys() == two.keys()}, same text {same}/{len(one)} (bf16: batch composition can move a token)")
print("| run | wall s (with load) | generate s | out tok/s | reuse | busy per replica s |")
print("|---|---:|---:|---:|---:|---|")
for name, wall in (("one engine", t1 - t0), ("2 replicas x 0.5 GPU", t2 - t1)):
    s = json.load(open(f"{out}/{'one' if name == 'one engine' else 'two'}.json"))
    busy = "-" if not s.get("data_parallel") else ", ".join(f"{r['busy_seconds']:.1f}" for r in s["data_parallel"]["replicas"])
    print(f"| {name} | {wall:.1f} | {s['seconds']['generate']:.2f} | {s['output_tokens_per_s']:,.0f} | {s['reuse_ratio']:.3f} | {busy} |")
PY
