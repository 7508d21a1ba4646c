"""Workload generators and `batchllm bench` on CPU."""

from __future__ import annotations

import json
import os

from collections import Counter

import pytest

from batchllm.bench.workloads import make_workload, read_workload_jsonl
from batchllm.entrypoints.cli import main
from batchllm.prefix import analyze_prefixes

TINY = os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks", "models", "tiny-llama")


def test_micro_workload_shape_and_seed(tmp_path):
    w = make_workload("micro-64-8-4-5", 32, vocab=1000, seed=3)
    assert len(w.prompts) == 32 and all(len(p) == 72 for p in w.prompts) and set(w.max_tokens) == {5}
    assert w.prompts == make_workload("micro-64-8-4-5", 32, vocab=1000, seed=3).prompts
    stats = analyze_prefixes(w.prompts, block_size=16).stats
    assert stats.groups == 8 and stats.saved_tokens == 8 * 3 * 64
    path = tmp_path / "w.jsonl"
    w.write_jsonl(str(path))
    assert read_workload_jsonl(str(path)).prompts == w.prompts


@pytest.mark.parametrize("name", ["multilevel", "noshare", "skewed", "realistic"])
def test_other_workloads(name):
    w = make_workload(name, 40, vocab=5000, seed=0)
    assert len(w.prompts) == 40 and all(0 < m <= 500 for m in w.max_tokens)
    reuse = analyze_prefixes(w.prompts, block_size=16).stats.reuse_ratio
    assert (reuse == 0.0) if name == "noshare" else (reuse > 0.3)


def test_realistic_workload_mixes_popular_documents_and_a_long_tail():
    w = make_workload("realistic", 2000, vocab=5000, seed=0)
    assert len(w.prompts) == 2000 and 20 <= min(w.max_tokens) and max(w.max_tokens) <= 400
    assert len({tuple(p[:400]) for p in w.prompts}) == 1  # one system prompt for all
    sizes = Counter(tuple(p[400:432]) for p in w.prompts).values()
    assert max(sizes) == 2000 // 25 and sum(1 for s in sizes if s == 1) > 100
    assert 0.3 < sum(s for s in sizes if s >= 8) / 2000 < 0.8
    assert sorted(w.max_tokens) != w.max_tokens and len(set(w.max_tokens)) > 100


def test_unknown_workload():
    with pytest.raises(ValueError, match="workload 'nope' is unknown"):
        make_workload("nope", 4, 100)


def test_bench_cli_compares_configs(tmp_path, capsys):
    out = tmp_path / "r.json"
    code = main(["bench", "--workload", "micro-64-8-4-3", "--requests", "16", "--model", TINY, "--load-format",
                 "dummy", "--compare", "batchllm,vllm-like", "--out", str(out), "--trace-dir", str(tmp_path)])
    assert code == 0
    data = json.loads(out.read_text())
    by_config = {r["config"]: r for r in data["results"]}
    assert by_config["batchllm"]["prefill_tokens_computed"] == 4 * 64 + 16 * 8
    assert by_config["vllm-like"]["prefill_tokens_computed"] <= 16 * 72
    assert by_config["batchllm"]["output_tokens"] == 48
    assert "vs batchllm" in capsys.readouterr().out
    assert (tmp_path / "trace_batchllm.json").exists()


def test_bench_table_takes_the_peer_line_of_the_same_workload_file(tmp_path, capsys):
    workload = make_workload("micro-32-8-2-2", 8, vocab=1000, seed=0)
    path = tmp_path / "w.jsonl"
    workload.write_jsonl(str(path))
    peer = tmp_path / "vllm.jsonl"
    lines = [
        {"peer": "vllm", "engine_start_s": 1.0},
        {"peer": "vllm 0.26.0", "workload": "w.jsonl", "requests": 8, "seconds": 2.0,
         "prompt_tokens": workload.prompt_tokens, "output_tokens": workload.output_tokens},
        {"peer": "vllm 0.26.0", "workload": "other.jsonl", "requests": 8, "seconds": 1.0,
         "prompt_tokens": workload.prompt_tokens, "output_tokens": workload.output_tokens},
        {"peer": "vllm 0.26.0", "workload": "w.jsonl", "requests": 8, "seconds": 1.0,
         "prompt_tokens": workload.prompt_tokens + 1, "output_tokens": workload.output_tokens},
    ]
    peer.write_text("not json\n" + "\n".join(json.dumps(x) for x in lines) + "\n")
    out = tmp_path / "r.json"
    assert main(["bench", "--input", str(path), "--model", TINY, "--load-format", "dummy", "--out", str(out),
                 "--peer-results", str(peer)]) == 0
    peers = json.loads(out.read_text())["peers"]
    assert [(p["config"], p["seconds"]) for p in peers] == [("vllm 0.26.0", 2.0)]
    captured = capsys.readouterr()
    assert "vllm 0.26.0" in captured.out and "other token counts" in captured.err


def test_bench_times_transformers_continuous_batching_on_the_same_requests(tmp_path):
    out = tmp_path / "r.json"
    assert main(["bench", "--workload", "micro-32-8-2-2", "--requests", "4", "--model", TINY, "--load-format",
                 "dummy", "--hf-requests", "2", "--out", str(out)]) == 0
    hf = json.loads(out.read_text())["transformers"]
    assert hf["config"] == "transformers generate_batch" and hf["requests"] == 2
    assert hf["output_tokens"] == 4 and hf["prompt_tokens"] == 2 * 40 and hf["seconds"] > 0


def test_floor_counts_prefix_reuse():
    from batchllm.bench.roofline import DeviceRates, workload_floor
    from batchllm.model.arch_config import load_arch_config

    arch = load_arch_config(TINY)
    rates = DeviceRates(matmul_flops_per_s=1e12, copy_bytes_per_s=1e11)
    shared = make_workload("micro-64-16-8-4", 32, vocab=2000, seed=0)
    distinct = make_workload("micro-0-80-1-4", 32, vocab=2000, seed=0)  # same lengths, nothing shared
    assert len(shared.prompts[0]) == len(distinct.prompts[0]) == 80
    f_shared = workload_floor(shared, arch, rates, block_size=16)
    f_distinct = workload_floor(distinct, arch, rates, block_size=16)
    params = arch.num_params() - arch.vocab_size * arch.hidden_size
    # linear-layer FLOPs: 2 x params per computed token; the shared prefix is computed once per group of 8
    linear_shared = 2 * params * (4 * 64 + 32 * 16 + 32 * 4)
    linear_distinct = 2 * params * (32 * 80 + 32 * 4)
    assert linear_shared < f_shared.flops < f_distinct.flops
    assert f_distinct.flops > linear_distinct
    assert f_shared.bytes < f_distinct.bytes  # a prefix's KV is read once per step for its whole group
    assert f_shared.seconds == max(f_shared.compute_s, f_shared.memory_s) > 0
