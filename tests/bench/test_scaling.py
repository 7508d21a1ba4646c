"""Issue 16's scaling figures (bench/scaling.py) and the vLLM side of its run (benchmarks/peer_vllm_dp.py,
driven here through a stand-in `vllm` module: the shards, the phase barrier and the lines it prints)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from batchllm.bench.scaling import markdown, run_from_summary, runs_from_peer_lines, scaling_table
from tests.bench.fake_vllm import write_fake_vllm

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "benchmarks", "peer_vllm_dp.py")


@pytest.fixture()
def fake_vllm(tmp_path):
    return write_fake_vllm(str(tmp_path / "fake"))


def _load_peer_module(fake_vllm: str):
    paths = [fake_vllm, os.path.dirname(SCRIPT)]
    sys.path[:0] = paths
    try:
        spec = importlib.util.spec_from_file_location("peer_vllm_dp", SCRIPT)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        for path in paths:
            sys.path.remove(path)
        sys.modules.pop("vllm", None)
        sys.modules.pop("peer_common", None)


@given(items=st.lists(st.integers(), max_size=40), parts=st.integers(1, 9))
def test_shards_are_contiguous_and_balanced(fake_vllm_module, items, parts):
    shards = [fake_vllm_module.shard(items, r, parts) for r in range(parts)]
    assert sum(shards, []) == items
    assert max(map(len, shards)) - min(map(len, shards)) <= 1


@pytest.fixture(scope="module")
def fake_vllm_module(tmp_path_factory):
    return _load_peer_module(write_fake_vllm(str(tmp_path_factory.mktemp("fake_vllm"))))


def test_three_ranks_run_each_phase_on_their_slice(fake_vllm, tmp_path):
    path = tmp_path / "w.jsonl"
    with open(path, "w") as f:
        for i in range(10):
            f.write(json.dumps({"prompt_token_ids": [1] * (i + 1), "max_tokens": 2 + i}) + "\n")
    env = dict(os.environ, PYTHONPATH=fake_vllm)
    procs = [subprocess.Popen([sys.executable, SCRIPT, "model", str(path), "--rank", str(k), "--world", "3",
                               "--phases", "1,2,3", "--sync", str(tmp_path / "sync")],
                              env=env, stdout=subprocess.PIPE, text=True) for k in range(3)]  # fmt: skip
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs)
    rows = [json.loads(line) for out in outs for line in out.splitlines() if '"replicas"' in line]
    assert sorted((r["replicas"], r["rank"]) for r in rows) == [(1, 0), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2)]
    for n in (1, 2, 3):
        phase = [r for r in rows if r["replicas"] == n]
        assert sum(r["requests"] for r in phase) == 10
        assert sum(r["prompt_tokens"] for r in phase) == 55 and sum(r["output_tokens"] for r in phase) == 65
    # Phase k+1 starts only after every rank of phase k has finished (the barrier).
    for n, nxt in ((1, 2), (2, 3)):
        assert max(r["end"] for r in rows if r["replicas"] == n) <= min(r["start"] for r in rows if r["replicas"] == nxt)
    runs = runs_from_peer_lines(line for out in outs for line in out.splitlines())
    assert [(r.replicas, r.tokens) for r in runs] == [(1, 120), (2, 120), (3, 120)]


def test_bad_phases_are_refused_naming_the_options(fake_vllm, tmp_path):
    proc = subprocess.run([sys.executable, SCRIPT, "model", "w.jsonl", "--rank", "0", "--world", "2", "--phases",
                           "1,4", "--sync", str(tmp_path)], env=dict(os.environ, PYTHONPATH=fake_vllm),
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 2 and "--phases 1,4" in proc.stderr


def _summary(seconds: float, replicas: int, extra_prefix: int = 0) -> dict:
    dp = None if replicas == 1 else {
        "replicas": [{"busy_seconds": seconds - 1 + 0.5 * k} for k in range(replicas)], "extra_prefix_tokens": extra_prefix}
    return {"seconds": {"generate": seconds}, "prompt_tokens": 9000, "completion_tokens": 1000,
            "prefill_tokens": 3000, "reuse_ratio": 2 / 3, "data_parallel": dp}  # fmt: skip


def test_scaling_table_efficiency_reuse_and_ratio():
    ours = [run_from_summary(_summary(100.0, 1), "realistic"), run_from_summary(_summary(52.0, 2, 900), "realistic")]
    peer_lines = [json.dumps({"workload": "realistic", "replicas": n, "rank": k, "start": 10.0, "end": 10.0 + s,
                              "seconds": s, "prompt_tokens": 9000 // n, "output_tokens": 1000 // n})
                  for n, s in ((1, 130.0), (2, 70.0)) for k in range(n)]  # fmt: skip
    rows = scaling_table(ours + runs_from_peer_lines(["not json"] + peer_lines))
    one, two = rows
    assert one["batchllm"]["efficiency"] == 1.0 and two["batchllm"]["efficiency"] == round(100 / (2 * 52), 3)
    assert two["batchllm"]["kept_reuse_ratio"] == pytest.approx(1 - 3900 / 9000)  # 900 prefix tokens twice
    assert two["batchllm"]["busy_seconds"] == [51.0, 51.5]
    assert two["vllm"]["efficiency"] == round(130 / (2 * 70), 3) and two["ratio"] == round(70 / 52, 3)
    table = markdown(rows)
    assert "| realistic | 2 | 52.00 |" in table and "0.667 (0.567)" in table


def test_a_missing_rank_is_an_error_not_a_faster_phase():
    line = json.dumps({"workload": "w", "replicas": 2, "rank": 0, "start": 0, "end": 1, "seconds": 1,
                       "prompt_tokens": 1, "output_tokens": 1})
    with pytest.raises(ValueError, match="1 ranks reported, expected 2"):
        runs_from_peer_lines([line])
