"""The prefix-shared kernels compile for Hopper (sm_90) without a GPU: pipelined KV loads, tensor cores
(wgmma for the stacked 64/128-row shared tiles), fitting shared memory, no register spills in bf16."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("triton")

from batchllm.attention.triton_shared_prefix import shared_prefix_config  # noqa: E402


def test_shared_prefix_kernels_compile_for_sm90():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run(
        [sys.executable, "-m", "batchllm.attention.shared_prefix_compile_check", "--quick"],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    if proc.returncode != 0 and "ptxas" in proc.stderr and "not found" in proc.stderr:
        pytest.skip("no ptxas available for offline compilation")
    assert proc.returncode == 0, proc.stderr[-4000:]
    reports = {r["name"]: r for r in json.loads(proc.stdout.strip().splitlines()[-1])}
    tag = "bf16-h32/8-d128"
    big = shared_prefix_config(32, 8, 128, torch.bfloat16).shared_block_m  # largest shared tile of the default
    r = reports[f"fused-decode-m{big}-{tag}"]
    assert r["async_copies"] > 0 and r["wgmma"] > 0, r  # shared tiles: pipelined loads, Hopper MMA
    assert reports[f"fused-decode-m16-{tag}"]["mma"] > 0
    assert reports[f"fused-mixed-m{big}-{tag}"]["wgmma"] > 0
    assert all(r["shared_bytes"] <= 227 * 1024 for r in reports.values())  # fits H100 shared memory
    for name in (f"fused-decode-m{big}-{tag}", f"cascade-shared-m{big}-{tag}", f"cascade-distinct-{tag}"):
        r = reports[name]
        assert r["registers"] == -1 or r["spill_bytes"] == 0, r  # decode hot path: no local-memory spills
