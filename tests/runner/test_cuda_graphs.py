"""CUDA graphs of decode iterations, plain and with shared prefix segments (GPU only): same tokens as
transformers, and the shared-segment batches really replay graphs (captured at start for the levels the
grouping can produce)."""

from __future__ import annotations

import pytest
import torch

from batchllm import LLM, SamplingParams
from batchllm.attention.triton.shared_prefix_plan import DEFAULT_DECODE_TILES, set_decode_tiles
from tests.conftest import hf_greedy

pytest.importorskip("triton")
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _groups(num_groups: int, members: int, shared_len: int, seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    prompts = []
    for _ in range(num_groups):
        prefix = torch.randint(1, 999, (shared_len,), generator=g).tolist()
        for _ in range(members):
            prompts.append(prefix + torch.randint(1, 999, (int(torch.randint(2, 30, (1,), generator=g)),),
                                                  generator=g).tolist())  # fmt: skip
    return prompts


@pytest.mark.parametrize("multi_level", [False, True])
def test_shared_decode_graphs_match_transformers(tiny_models, multi_level):
    path = tiny_models["llama"]
    prompts = _groups(3, 5, 40, seed=1) + _groups(2, 2, 33, seed=2) + [[7, 8, 9]]
    if multi_level:  # a system prompt above two documents
        prompts = [list(range(100, 132)) + p for p in prompts]
    expected = hf_greedy(path, prompts, 12)
    llm = LLM(path, device="cuda", dtype="float32", skip_tokenizer_init=True, attention_backend="triton",
              multi_level=multi_level, min_shared_len=16, num_kv_blocks=256)
    graphs = llm.engine.runner.decode_graphs
    levels = 2 if multi_level else 1  # two-level graphs are captured up front when groups can nest
    assert graphs is not None and graphs.num_shared_graphs == levels * (len(graphs.buckets) - 1)
    captured = len(graphs.graphs)
    replays = []
    run = graphs.run

    def counting_run(inputs):
        logits = run(inputs)
        replays.append(logits is not None and inputs.meta.shared is not None)
        return logits

    graphs.run = counting_run
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], SamplingParams(temperature=0, max_tokens=12),
                        use_tqdm=False)
    assert [o.outputs[0].token_ids for o in outs] == expected
    assert any(replays), "no shared-segment decode batch ran as a graph"
    assert len(graphs.graphs) == captured, "a graph was captured during the batch"


def test_recaptured_graphs_use_the_new_decode_tiles_and_stay_exact(tiny_models):
    """After a tile switch, recapture_decode_graphs replaces every graph (the same count, none captured
    mid-batch) and bf16 shared decode over them agrees with the graphs it replaced, to bf16 rounding."""
    path = tiny_models["llama"]
    prompts = [list(range(100, 132)) + p for p in _groups(3, 5, 40, seed=1) + _groups(2, 2, 33, seed=2)]
    llm = LLM(path, device="cuda", dtype="bfloat16", skip_tokenizer_init=True, attention_backend="triton",
              multi_level=True, min_shared_len=16, num_kv_blocks=256)
    params = SamplingParams(temperature=0, max_tokens=12)
    before = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    runner = llm.engine.runner
    old = runner.decode_graphs
    count = len(old.graphs)
    set_decode_tiles("long-keys")
    try:
        runner.recapture_decode_graphs()
        assert runner.decode_graphs is not old and len(runner.decode_graphs.graphs) == count
        after = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    finally:
        set_decode_tiles(DEFAULT_DECODE_TILES)
    assert len(runner.decode_graphs.graphs) == count, "a graph was captured during the batch"
    first_tokens = [(b.outputs[0].token_ids[:4], a.outputs[0].token_ids[:4]) for b, a in zip(before, after)]
    assert sum(x == y for x, y in first_tokens) >= len(prompts) - 1, first_tokens
