"""The replica without Ray (units in, events out), and the data-parallel options' checks and memory shares."""

from __future__ import annotations

import numpy as np
import pytest

from batchllm import LLM, SamplingParams
from batchllm.batch.openai_format import BatchRequest
from batchllm.batch.store import CompactRequests
from batchllm.distributed.options import DataParallelOptions, replica_llm_kwargs
from batchllm.distributed.replica import EngineReplica
from tests.conftest import mixed_prompts


def test_replica_streams_started_outputs_and_done_per_unit(tiny_models):
    prompts = mixed_prompts(seed=9, count=12)
    params = SamplingParams(temperature=0.0, max_tokens=6)
    store = CompactRequests()
    for i, p in enumerate(prompts):
        store.add(BatchRequest(f"r{i}", "completion", params), np.asarray(p), max_model_len=512)
    kwargs = dict(model=tiny_models["llama"], device="cpu", skip_tokenizer_init=True)
    expected = [o.outputs[0].token_ids for o in
                LLM(**kwargs).generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)]
    replica = EngineReplica(kwargs, cpu_threads=1)
    units = {7: np.arange(0, 5), 3: np.arange(5, 12)}
    for unit_id, ids in units.items():
        replica.submit(unit_id, store.select(ids))
    replica.close()
    events = [e for chunk in replica.stream() for e in chunk]
    kinds = [(e[0], e[1]) for e in events if e[0] != "outputs"]
    assert kinds[0] == ("started", 7) and ("started", 3) in kinds
    assert {u for k, u in kinds if k == "done"} == {7, 3}
    got = {}
    for e in events:
        if e[0] == "outputs":
            for j, output in e[2]:
                assert output.prompt_token_ids == []  # the driver has the prompts
                got[int(units[e[1]][j])] = output.outputs[0].token_ids
    assert [got[i] for i in range(len(prompts))] == expected
    last_done = [e for e in events if e[0] == "done"][-1][2]
    assert last_done["generated_tokens"] == sum(map(len, expected)) and last_done["busy_seconds"] > 0
    assert replica.info().num_kv_blocks > 0


@pytest.mark.parametrize("fields, message", [
    (dict(num_replicas=0), "data_parallel=0"),
    (dict(gpus_per_replica=-1), "gpus_per_replica=-1"),
    (dict(gpus_per_replica=2), "tensor parallelism"),
    (dict(gpus_per_replica=1.5), "whole number"),
    (dict(max_restarts=-1), "max_restarts"),
    (dict(units_per_replica=0), "units_per_replica"),
])
def test_options_say_what_to_change(fields, message):
    with pytest.raises(ValueError, match=message):
        DataParallelOptions(**fields)


def test_gpus_resolved_against_the_cluster_and_memory_shared():
    assert DataParallelOptions(num_replicas=4).resolved_gpus(0) == 0.0
    assert DataParallelOptions(num_replicas=4).resolved_gpus(8) == 1.0
    with pytest.raises(ValueError, match="need 4 GPUs, but the Ray cluster has 1"):
        DataParallelOptions(num_replicas=4, gpus_per_replica=1).resolved_gpus(1)
    assert DataParallelOptions(num_replicas=2, gpus_per_replica=0.5).resolved_gpus(1) == 0.5
    half = replica_llm_kwargs({"gpu_memory_utilization": 0.8}, 0.5)
    assert half == {"gpu_memory_utilization": 0.4, "gpu_memory_is_share": True}
    assert replica_llm_kwargs({}, 0) == {"device": "cpu"}
    assert replica_llm_kwargs({"device": "cuda"}, 1) == {"device": "cuda"}
