"""Write a model as an FP8 (compressed-tensors, per-channel) checkpoint: batchllm.model.fp8_export.

    python benchmarks/make_fp8_checkpoint.py MODEL (folder or .gguf) OUT_DIR
"""

from __future__ import annotations

import sys

import bench_setup  # noqa: E402,F401  (first: repo on sys.path)

from batchllm.model.fp8_export import write_fp8_checkpoint  # noqa: E402

if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    print(write_fp8_checkpoint(sys.argv[1], sys.argv[2]))
