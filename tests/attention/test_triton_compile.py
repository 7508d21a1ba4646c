"""The kernels compile for Hopper (sm_90) on a machine without a GPU, with pipelined loads and MMAs.

The interpreter used by the CPU tests accepts code the real compiler rejects, so this catches
GPU-only errors before any GPU time is spent. Runs in a subprocess without TRITON_INTERPRET.
"""

from __future__ import annotations

import pytest

pytest.importorskip("triton")

from tests.attention.compile_check import run_compile_check  # noqa: E402


def test_compiles_for_sm90():
    reports = run_compile_check("batchllm.attention.triton.compile_check", "--kernels", "paged")
    decode = reports["decode-bf16-h32/8-d128"]
    prefill = reports["prefill-bf16-h32/8-d128"]
    assert decode["async_copies"] > 0 and decode["mma"] > 0, decode  # KV loads pipelined, tensor cores used
    assert prefill["async_copies"] > 0 and prefill["wgmma"] > 0, prefill  # Hopper wgmma for 128-row tiles
    assert all(r["shared_bytes"] <= 227 * 1024 for r in reports.values())  # fits H100 shared memory
    assert reports["decode-split8-bf16-h32/8-d128"]["async_copies"] > 0
