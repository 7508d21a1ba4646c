"""`batchllm report` draws traces written by the engine."""

from __future__ import annotations

import json

import pytest

from batchllm import LLM, SamplingParams
from batchllm.entrypoints.cli import main
from tests.conftest import mixed_prompts


def test_trace_and_report(tmp_path, tiny_models):
    prompts = [{"prompt_token_ids": p} for p in mixed_prompts(seed=2, count=8)]
    paths = []
    for scheduling in ("vllm-like", "batchllm"):
        llm = LLM(tiny_models["llama"], device="cpu", skip_tokenizer_init=True, scheduling=scheduling,
                  max_num_batched_tokens=64)
        llm.generate(prompts, SamplingParams(temperature=0, max_tokens=5), use_tqdm=False)
        path = tmp_path / f"{scheduling}.json"
        llm.save_trace(str(path), label=scheduling)
        trace = json.loads(path.read_text())
        assert len(trace["batch_tokens"]) == llm.engine.num_iterations
        assert all(b <= 64 for b in trace["batch_tokens"])
        assert sum(trace["decode_tokens"]) + sum(trace["prefill_tokens"]) == sum(trace["batch_tokens"])
        paths.append(str(path))
    png = tmp_path / "trace.png"
    assert main(["report", *paths, "-o", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_rejects_non_trace(tmp_path):
    bad = tmp_path / "x.json"
    bad.write_text("{}")
    with pytest.raises(ValueError, match="not a batchllm trace"):
        main(["report", str(bad), "-o", str(tmp_path / "y.png")])
