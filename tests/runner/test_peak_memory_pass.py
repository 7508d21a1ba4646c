"""The runner's peak-memory pass (run before the KV cache is sized on a GPU): one forward of the largest
iteration the scheduler can plan, on its own scratch cache. Run here on CPU, with the CUDA memory calls
stubbed, so that its metadata and shapes are checked where CI runs."""

from __future__ import annotations

import torch

from batchllm import LLM


def test_peak_pass_runs_the_largest_iteration_on_a_scratch_cache(tiny_models, monkeypatch):
    llm = LLM(tiny_models["llama"], dtype="float32", skip_tokenizer_init=True, max_model_len=96,
              max_num_batched_tokens=200, num_kv_blocks=64)
    runner = llm.engine.runner
    for name in ("empty_cache", "reset_peak_memory_stats", "synchronize"):
        monkeypatch.setattr(torch.cuda, name, lambda *a, **k: None)
    engine_caches = [(k.clone(), v.clone()) for k, v in runner.kv_caches]
    seen = {}
    model = runner.model

    def spy(input_ids, positions, caches, meta, backend, logits_index):
        seen.update(tokens=len(input_ids), positions=positions.tolist(), seq_lens=list(meta.seq_lens_cpu),
                    caches=caches, logits=model(input_ids, positions, caches, meta, backend, logits_index))
        return seen["logits"]

    monkeypatch.setattr(runner, "model", spy)
    runner._profile_peak_activation()
    # 200 tokens at max_model_len 96: sequences of 96, 96 and 8, each from position 0.
    assert seen["tokens"] == 200 and seen["seq_lens"] == [96, 96, 8]
    assert seen["positions"] == list(range(96)) * 2 + list(range(8))
    assert seen["logits"].shape[0] == 3 and torch.isfinite(seen["logits"]).all()
    assert seen["caches"] is not runner.kv_caches
    for (k, v), (k0, v0) in zip(runner.kv_caches, engine_caches):
        assert torch.equal(k, k0) and torch.equal(v, v0)  # the engine's own cache is untouched
