"""``batchllm.distributed.ray_data.generate`` over a local CPU Ray: a ``ray.data.Dataset`` in, the same dataset
with results as columns out, equal to one engine's greedy output; bad rows get an error, never fail the run."""

from __future__ import annotations

import os
import random

import pytest

pytest.importorskip("ray")
pytest.importorskip("ray.data")

import ray  # noqa: E402

from batchllm.distributed.ray_data import generate  # noqa: E402

DEFAULT_MAX_TOKENS = 8
OUTPUT_COLUMNS = ["generated_text", "prompt_tokens", "completion_tokens", "finish_reason", "error"]


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    # The data-parallel executor reuses an initialised Ray and leaves it running: this module owns its end.
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()


def _token_rows(seed: int = 7) -> list[dict]:
    """3 prefix groups, singletons, a row with a token outside the vocabulary and one with max_tokens=-1."""
    rng = random.Random(seed)
    rows = []
    for g in range(3):
        prefix = [rng.randint(1, 900) for _ in range(rng.randint(34, 50))]
        for m in range(6):
            rows.append({"prompt_token_ids": prefix + [rng.randint(1, 900) for _ in range(rng.randint(2, 10))],
                         "max_tokens": None, "tag": f"g{g}-{m}"})
    for s in range(8):
        rows.append({"prompt_token_ids": [rng.randint(1, 900) for _ in range(rng.randint(3, 30))],
                     "max_tokens": None, "tag": f"s{s}"})
    rows[3]["max_tokens"], rows[20]["max_tokens"] = 3, 12  # g0-3 and s2: per-row values beside the default
    rows.append({"prompt_token_ids": [5, 10**6, 7], "max_tokens": None, "tag": "bad-vocab"})
    rows.append({"prompt_token_ids": [5, 6, 7], "max_tokens": -1, "tag": "bad-max-tokens"})
    rows.append({"prompt_token_ids": [8, 9, 10, 11], "max_tokens": None, "tag": "s-last"})
    rng.shuffle(rows)
    return rows


def _reference(model: str, rows: list[dict]) -> dict:
    """tag -> (text, prompt tokens, completion tokens, finish reason) from one engine, greedy."""
    from batchllm import LLM, SamplingParams

    llm = LLM(model, max_num_seqs=64)
    outputs = llm.generate([{"prompt_token_ids": r["prompt_token_ids"]} for r in rows],
                           [SamplingParams(temperature=0, max_tokens=r["max_tokens"] or DEFAULT_MAX_TOKENS)
                            for r in rows], use_tqdm=False)
    return {r["tag"]: (o.outputs[0].text, len(o.prompt_token_ids), len(o.outputs[0].token_ids),
                       o.outputs[0].finish_reason) for r, o in zip(rows, outputs)}


def test_token_ids_two_replicas_equal_one_engine(text_model):
    rows = _token_rows()
    # Several blocks, so some see max_tokens all null (an Arrow null column) and others int64.
    dataset = ray.data.from_items(rows, override_num_blocks=4)
    result = generate(dataset, text_model, data_parallel=2, gpus_per_replica=0, llm_kwargs={"max_num_seqs": 64},
                      sampling={"temperature": 0, "max_tokens": DEFAULT_MAX_TOKENS})
    assert result.columns() == ["prompt_token_ids", "max_tokens", "tag", *OUTPUT_COLUMNS]
    out = result.take_all()
    assert [r["tag"] for r in out] == [r["tag"] for r in rows]  # same rows, same order
    assert [list(r["prompt_token_ids"]) for r in out] == [r["prompt_token_ids"] for r in rows]

    by_tag = {r["tag"]: r for r in out}
    vocab = by_tag["bad-vocab"]
    assert vocab["error"].startswith("invalid_prompt: ") and "1000000" in vocab["error"], vocab["error"]
    bad_max = by_tag["bad-max-tokens"]
    assert bad_max["error"].startswith("invalid_parameter: ") and "max_tokens" in bad_max["error"], bad_max["error"]
    for bad in (vocab, bad_max):
        assert bad["generated_text"] is None and bad["finish_reason"] is None
        assert bad["prompt_tokens"] == bad["completion_tokens"] == 0

    good = [r for r in rows if not r["tag"].startswith("bad")]
    expected = _reference(text_model, good)
    got = {r["tag"]: (r["generated_text"], r["prompt_tokens"], r["completion_tokens"], r["finish_reason"])
           for r in out if r["tag"] in expected}
    assert all(by_tag[tag]["error"] is None for tag in expected)
    assert got == expected
    # The per-row max_tokens column, not the default, bounds those rows.
    assert by_tag["g0-3"]["completion_tokens"] <= 3 and by_tag["g0-3"]["max_tokens"] == 3
    assert by_tag["s2"]["max_tokens"] == 12


def test_chat_messages_in_process_engine_and_resume(text_model, tmp_path):
    conversations = [[{"role": "system", "content": "Answer briefly."},
                      {"role": "user", "content": f"What is {q}+{q}?"}] for q in range(4)]
    conversations.append([{"role": "user", "content": "Name a colour.", "name": "ann"}])  # a key only one row has
    dataset = ray.data.from_items([{"messages": c, "temperature": 0.0} for c in conversations])
    work_dir = str(tmp_path / "work")
    kwargs = dict(data_parallel=1, gpus_per_replica=0, sampling={"max_tokens": 6}, work_dir=work_dir)
    out = generate(dataset, text_model, **kwargs).take_all()
    assert len(out) == len(conversations)
    assert all(r["error"] is None for r in out), [r["error"] for r in out]
    assert all(isinstance(r["generated_text"], str) and 1 <= r["completion_tokens"] <= 6 for r in out)
    assert all(r["prompt_tokens"] > 10 for r in out)  # the chat template was applied
    assert [r["messages"][-1]["content"] for r in out] == [c[-1]["content"] for c in conversations]

    # The same rows and work_dir again: resumed from the results file, nothing generated twice.
    again = generate(dataset, text_model, **kwargs).take_all()
    assert [(r["generated_text"], r["completion_tokens"]) for r in again] == \
        [(r["generated_text"], r["completion_tokens"]) for r in out]
    with open(os.path.join(work_dir, "results.jsonl"), "rb") as f:
        assert sum(1 for _ in f) == len(conversations)


def test_misuse_is_refused_before_any_compute(text_model):
    both = ray.data.from_items([{"prompt": "hi", "messages": [{"role": "user", "content": "hi"}]}])
    with pytest.raises(ValueError, match=r"exactly one prompt column.*'messages', 'prompt'"):
        generate(both, text_model)
    with pytest.raises(ValueError, match=r"exactly one prompt column.*\['text'\]"):
        generate(ray.data.from_items([{"text": "hi"}]), text_model)
    with pytest.raises(ValueError, match=r"already has column\(s\) \['error'\]"):
        generate(ray.data.from_items([{"prompt": "hi", "error": None}]), text_model)
    with pytest.raises(ValueError, match=r"sampling has unknown field\(s\) \['temprature'\]"):
        generate(ray.data.from_items([{"prompt": "hi"}]), text_model, sampling={"temprature": 0})
    with pytest.raises(ValueError, match=r"sampling: max_tokens"):
        generate(ray.data.from_items([{"prompt": "hi"}]), text_model, sampling={"max_tokens": 0})
    with pytest.raises(ValueError, match=r"data_parallel=0"):
        generate(ray.data.from_items([{"prompt": "hi"}]), text_model, data_parallel=0)
