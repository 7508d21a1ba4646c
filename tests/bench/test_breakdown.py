"""The run breakdown's arithmetic on hand-made kernel records."""

from __future__ import annotations

import numpy as np
import pytest

from batchllm.bench.breakdown import KernelRecord, busy_seconds, device_kernel_records, kernel_kind, summarize
from batchllm.bench.roofline import DeviceRates, iteration_floor_seconds
from batchllm.model.arch_config import load_arch_config


def test_kernel_kinds_by_name_and_the_sampler_by_phase():
    assert kernel_kind("nvjet_tst_256x128_64x4_1x2_h_bz_coopA_NNT") == "gemm"
    assert kernel_kind("_shared_prefix_kernel") == "attention"
    assert kernel_kind("_rms_norm_kernel") == "elementwise"
    assert kernel_kind("Memcpy DtoD (Device -> Device)") == "copy"
    assert kernel_kind("aten::add", phase="sample") == "sampler"
    assert kernel_kind("something_else") == "other"


def test_busy_time_is_the_union_of_intervals():
    assert busy_seconds([(0, 10), (5, 20), (30, 40), (32, 35)]) == pytest.approx(30e-6)
    assert busy_seconds([]) == 0.0


def test_summarize_adds_up_by_phase_kind_and_launch():
    records = [KernelRecord("gemm_a", 100, "prefill", False), KernelRecord("gemm_a", 50, "decode", True),
               KernelRecord("_paged_attn_kernel", 30, "decode", True), KernelRecord("aten::mul", 20, "sample", False)]
    b = summarize(records, wall_s=400e-6, intervals=[(0, 100), (150, 250)])
    assert b.by_phase_kind[("prefill", "gemm")] == pytest.approx(100e-6)
    assert b.by_phase_kind[("decode", "attention")] == pytest.approx(30e-6)
    assert b.by_phase_kind[("sample", "sampler")] == pytest.approx(20e-6)
    assert b.graph_s == pytest.approx(80e-6) and b.eager_s == pytest.approx(120e-6)
    assert b.idle_s == pytest.approx(200e-6)
    assert b.top[0] == ("gemm_a", 2, pytest.approx(150e-6))
    assert "idle (host gaps)" in b.table()


def test_iteration_floor_is_the_larger_of_compute_and_bytes():
    arch = load_arch_config("benchmarks/models/llama-3.1-8b")
    rates = DeviceRates(matmul_flops_per_s=1e15, copy_bytes_per_s=4e12, fp8_matmul_flops_per_s=2e15)
    floors = iteration_floor_seconds(np.array([1, 16384]), np.array([0, 0]), arch, rates, 16)
    assert floors[0] == pytest.approx(arch.weight_bytes(2) / 4e12)  # one row: reading the weights binds
    assert floors[1] == pytest.approx(2 * arch.linear_params() * 16384 / 1e15)  # a prefill chunk: the FLOPs
    fp8 = iteration_floor_seconds(np.array([16384]), np.array([0]), arch, rates, 16, fp8_linears=True)
    assert fp8[0] == pytest.approx(floors[1] / 2)
    with_kv = iteration_floor_seconds(np.array([1]), np.array([1000]), arch, rates, 16)
    assert with_kv[0] == pytest.approx((arch.weight_bytes(2) + 1000 * 16 * arch.kv_bytes_per_token(2)) / 4e12)


def test_device_kernels_are_attributed_through_their_launch_and_the_kernel_before():
    from types import SimpleNamespace as E

    cpu, cuda = E(name="CPU"), E(name="CUDA")
    prefill, decode = E(name="phase:prefill", cpu_parent=None), E(name="phase:decode", cpu_parent=None)

    def launch(corr, name, parent):
        return E(id=corr, name=name, device_type=cpu, cpu_parent=parent, time_range=E(start=0, end=1))

    def kernel(corr, name, start, end):
        return E(id=corr, name=name, device_type=cuda, time_range=E(start=start, end=end))

    events = [
        E(id=1, name="aten::mm", device_type=cpu, cpu_parent=prefill, time_range=E(start=0, end=1)),
        E(id=2, name="phase:prefill", device_type=cpu, cpu_parent=None, is_user_annotation=True,
          time_range=E(start=0, end=2)),
        E(id=3, name="phase:prefill", device_type=cuda, time_range=E(start=10, end=30)),  # its device-side span
        launch(11, "cudaLaunchKernel", prefill), launch(12, "cuLaunchKernel", prefill),
        launch(13, "cudaGraphLaunch", decode),
        kernel(12, "_paged_attn_kernel", 20, 30), kernel(11, "nvjet_gemm", 10, 20),
        kernel(13, "nvjet_gemm", 40, 45), kernel(99, "_rms_norm_kernel", 45, 47),  # 99: launch not traced
    ]

    def phase_of(e):
        while e is not None and not e.name.startswith("phase:"):
            e = e.cpu_parent
        return e.name.split(":")[1] if e is not None else "other"

    records, intervals = device_kernel_records(events, phase_of)
    assert [(r.name, r.microseconds, r.phase, r.from_graph) for r in records] == [
        ("nvjet_gemm", 10, "prefill", False), ("_paged_attn_kernel", 10, "prefill", False),
        ("nvjet_gemm", 5, "decode", True), ("_rms_norm_kernel", 2, "decode", False)]
    assert intervals == [(10, 20), (20, 30), (40, 45), (45, 47)]
    assert kernel_kind("_rms_norm_fp8_kernel") == "elementwise" and kernel_kind("_store_kv_fp8_kernel") == "kv write"
