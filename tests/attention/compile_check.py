"""Run an offline compile-check module (sm_90, no GPU) in a subprocess without TRITON_INTERPRET."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


def run_compile_check(module: str, *args: str) -> dict[str, dict]:
    """The module's JSON reports by name (`args`: more of its options); skips the test when no ptxas is available."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run(
        [sys.executable, "-m", module, "--quick", *args], env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    if proc.returncode != 0 and "ptxas" in proc.stderr and "not found" in proc.stderr:
        pytest.skip("no ptxas available for offline compilation")
    assert proc.returncode == 0, proc.stderr[-4000:]
    return {r["name"]: r for r in json.loads(proc.stdout.strip().splitlines()[-1])}
