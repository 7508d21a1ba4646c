"""The prefix-shared kernels compile for Hopper (sm_90) without a GPU: pipelined KV loads, tensor cores
(wgmma for the stacked 64/128-row shared tiles), fitting shared memory, no register spills in bf16."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from tests.attention.compile_check import run_compile_check  # noqa: E402

from batchllm.attention.triton.shared_prefix_plan import shared_prefix_config  # noqa: E402


def test_shared_prefix_kernels_compile_for_sm90():
    reports = run_compile_check("batchllm.attention.triton.compile_check", "--kernels", "shared")
    tag = "bf16-h32/8-d128"
    big = shared_prefix_config(32, 8, 128, torch.bfloat16).shared_block_m  # largest shared tile of the default
    r = reports[f"fused-decode-m{big}-{tag}"]
    assert r["async_copies"] > 0 and r["wgmma"] > 0, r  # shared tiles: pipelined loads, Hopper MMA
    assert reports[f"fused-decode-m16-{tag}"]["mma"] > 0
    assert reports[f"fused-mixed-m{big}-{tag}"]["wgmma"] > 0
    prefill = reports[f"fused-prefill-m128-{tag}"]  # prefill-heavy launches: 128-row tiles, 8 warps
    assert prefill["wgmma"] > 0 and prefill["async_copies"] > 0 and prefill["num_warps"] == 8, prefill
    assert all(r["shared_bytes"] <= 227 * 1024 for r in reports.values())  # fits H100 shared memory
    for name in (f"fused-decode-m{big}-{tag}", f"cascade-shared-m{big}-{tag}", f"cascade-distinct-{tag}"):
        r = reports[name]
        assert r["registers"] == -1 or r["spill_bytes"] == 0, r  # decode hot path: no local-memory spills
