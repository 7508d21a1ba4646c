"""The engine with the Triton backends (fused prefix-shared kernel and plain paged) equals transformers.

On CPU the kernels run in Triton's interpreter (TRITON_INTERPRET=1, set in conftest), so the model is tiny;
on a GPU machine (no interpreter) they are compiled and run on the GPU.
"""

from __future__ import annotations

import pytest
import torch

from batchllm import LLM, SamplingParams
from tests.conftest import hf_greedy

pytest.importorskip("triton")


def _grouped_prompts() -> list[list[int]]:
    system = list(range(100, 124))  # 24 tokens: one full block of 16 shared by all
    docs = [list(range(200 + 40 * d, 216 + 40 * d)) for d in range(2)]  # one more block per document
    prompts = [system + docs[i % 2] + [300 + i, 301 + i, 302 + (i % 3)] for i in range(6)]
    return prompts + [[400, 401, 402, 403, 404]]


@pytest.mark.parametrize("backend, multi_level", [("triton", False), ("triton", True), ("triton-unfused", False)])
def test_triton_backends_match_transformers(tiny_models, backend, multi_level):
    path = tiny_models["llama"]
    prompts = _grouped_prompts()
    expected = hf_greedy(path, prompts, 4)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    llm = LLM(path, device=device, dtype="float32", skip_tokenizer_init=True, attention_backend=backend,
              multi_level=multi_level, min_shared_len=16)
    backend_impl = llm.engine.runner.backend
    forward, shared_levels = backend_impl.forward, []

    def counting_forward(query, key, value, k_cache, v_cache, meta, scale):
        if meta.shared is not None:
            shared_levels.append(meta.shared.num_levels)
        return forward(query, key, value, k_cache, v_cache, meta, scale)

    backend_impl.forward = counting_forward
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], SamplingParams(temperature=0, max_tokens=4),
                           use_tqdm=False)
    assert [o.outputs[0].token_ids for o in outputs] == expected
    assert llm.engine.scheduler.counters.prefix_groups >= (3 if multi_level else 1)
    if backend == "triton":  # the fused kernel really ran on shared segments (2 levels with multi-level groups)
        assert shared_levels and max(shared_levels) == (2 if multi_level else 1)
    else:
        assert not shared_levels
