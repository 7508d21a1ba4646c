"""CompactRequests.select: the arrays a replica is sent give back each request's prompt and params."""

from __future__ import annotations

import numpy as np

from batchllm.batch.openai_format import BatchRequest
from batchllm.batch.store import CompactRequests
from batchllm.sampling_params import SamplingParams


def test_select_round_trips_prompts_and_params():
    store = CompactRequests()
    rng = np.random.default_rng(0)
    prompts, params = [], []
    for i in range(40):
        ids = rng.integers(1, 500, size=int(rng.integers(1, 30)))
        p = SamplingParams(temperature=0.0 if i % 3 else 0.7, max_tokens=5 + i % 4, seed=i if i % 5 == 0 else None)
        store.add(BatchRequest(f"c{i}", "completion", p, seed_derived=i % 5 == 0), ids, max_model_len=512)
        prompts.append(ids.tolist())
        params.append(p)
    chosen = np.array([39, 0, 7, 7, 12, 25])
    work = store.select(chosen)
    assert len(work) == len(chosen)
    assert [ids for _, ids in work.encoded()] == [prompts[i] for i in chosen]
    assert work.params_list() == [store.params(int(i)) for i in chosen] == [params[i] for i in chosen]
    assert len(work.param_table) <= len(set(map(repr, (params[i] for i in chosen))))
    assert work.tokens.dtype == np.int32 and work.offsets[0] == 0
    empty = store.select(np.array([], dtype=np.int64))
    assert len(empty) == 0 and empty.encoded() == [] and empty.params_list() == []
