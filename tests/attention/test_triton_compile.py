"""The kernels compile for Hopper (sm_90) on a machine without a GPU, with pipelined loads and MMAs.

The interpreter used by the CPU tests accepts code the real compiler rejects, so this catches
GPU-only errors before any GPU time is spent. Runs in a subprocess without TRITON_INTERPRET.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")


def test_compiles_for_sm90():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run(
        [sys.executable, "-m", "batchllm.attention.triton_compile_check", "--quick"],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    if proc.returncode != 0 and "ptxas" in proc.stderr and "not found" in proc.stderr:
        pytest.skip("no ptxas available for offline compilation")
    assert proc.returncode == 0, proc.stderr[-4000:]
    reports = {r["name"]: r for r in json.loads(proc.stdout.strip().splitlines()[-1])}
    decode = reports["decode-bf16-h32/8-d128"]
    prefill = reports["prefill-bf16-h32/8-d128"]
    assert decode["async_copies"] > 0 and decode["mma"] > 0, decode  # KV loads pipelined, tensor cores used
    assert prefill["async_copies"] > 0 and prefill["wgmma"] > 0, prefill  # Hopper wgmma for 128-row tiles
    assert all(r["shared_bytes"] <= 227 * 1024 for r in reports.values())  # fits H100 shared memory
    assert reports["decode-split8-bf16-h32/8-d128"]["async_copies"] > 0
