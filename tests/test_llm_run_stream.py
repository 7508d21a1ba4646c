"""LLM.run_stream: batches fed while the engine runs give the same tokens as one call, each batch is taken
only when every earlier request is admitted, and a closed stream leaves the LLM clean."""

from __future__ import annotations

from batchllm import LLM, SamplingParams
from tests.conftest import mixed_prompts

GREEDY = SamplingParams(temperature=0.0, max_tokens=8)
SMALL = dict(device="cpu", skip_tokenizer_init=True, block_size=4, num_kv_blocks=64, max_num_batched_tokens=32,
             max_model_len=160)


def _batches() -> list[list[list[int]]]:
    prompts = mixed_prompts(seed=5, count=15)
    return [prompts[:6], prompts[6:7], prompts[7:]]


def test_fed_batches_equal_one_call_and_wait_only_when_idle(tiny_models):
    llm = LLM(tiny_models["llama"], **SMALL)
    batches = _batches()
    expected = [o.outputs[0].token_ids for o in
                llm.generate([{"prompt_token_ids": p} for b in batches for p in b], GREEDY, use_tqdm=False)]
    pending = list(batches)
    calls = []

    def next_batch(wait: bool):
        calls.append((wait, llm.engine.num_waiting(), llm.engine.has_unfinished()))
        if not pending:
            return None
        if not wait and len(calls) % 2:  # "nothing yet" now and then: the engine must go on stepping
            return None
        batch = pending.pop(0)
        return [(None, p) for p in batch], [GREEDY] * len(batch)

    got = {}
    for number, index, output in llm.run_stream(next_batch):
        got[(number, index)] = output.outputs[0].token_ids
    flat = [got[(b, i)] for b, batch in enumerate(batches) for i in range(len(batch))]
    assert flat == expected
    assert all(waiting == 0 for _, waiting, _ in calls), "a batch was asked for while requests still waited"
    assert all(wait == (not busy) for wait, _, busy in calls), "wait=True exactly when the engine is idle"
    assert not llm.engine.has_unfinished()


def test_closing_the_stream_aborts_everything(tiny_models):
    llm = LLM(tiny_models["llama"], **SMALL)
    batches = iter(_batches())

    def next_batch(wait: bool):
        batch = next(batches, None)
        return None if batch is None else ([(None, p) for p in batch], [GREEDY] * len(batch))

    stream = llm.run_stream(next_batch)
    next(stream)
    stream.close()
    assert not llm.engine.has_unfinished()
    outs = llm.generate([{"prompt_token_ids": [1, 2, 3]}], GREEDY, use_tqdm=False)  # the LLM is usable again
    assert outs[0].finished
