"""Run Triton kernels in the CPU interpreter when there is no GPU.

TRITON_INTERPRET is read when a kernel is decorated (module import), so it is set here, before
any test module imports triton or batchllm.attention.triton.paged.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
