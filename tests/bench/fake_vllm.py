"""A stand-in `vllm` package for testing the peer scripts on CPU (benchmarks/peer_*.py): the LLM class
records its engine arguments on stderr and "generates" max_tokens zeros for each of n samples."""

from __future__ import annotations

import os

FAKE_VLLM = """
import json
import sys


class SamplingParams:
    def __init__(self, n=1, max_tokens=16, **kw):
        self.n, self.max_tokens = n, max_tokens


class _Completion:
    def __init__(self, tokens):
        self.token_ids = [0] * tokens


class _Output:
    def __init__(self, params):
        self.outputs = [_Completion(params.max_tokens) for _ in range(params.n)]


class LLM:
    def __init__(self, **kw):
        print(json.dumps({"fake_llm_kwargs": kw}), file=sys.stderr, flush=True)

    def generate(self, prompts, params, use_tqdm=False):
        if not isinstance(params, list):
            params = [params] * len(prompts)
        assert len(params) == len(prompts)
        return [_Output(p) for p in params]

    def reset_prefix_cache(self):
        pass
"""


def write_fake_vllm(root: str) -> str:
    """Write the package under `root` (a folder to put on PYTHONPATH); returns `root`."""
    os.makedirs(os.path.join(root, "vllm"), exist_ok=True)
    with open(os.path.join(root, "vllm", "__init__.py"), "w") as f:
        f.write(FAKE_VLLM)
    return root
