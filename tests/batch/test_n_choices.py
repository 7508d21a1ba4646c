"""`n` in batch bodies: n choices per result line, usage summed over them, reuse counted for every sample."""

from __future__ import annotations

import json

import numpy as np
import pytest

from batchllm import SamplingParams
from batchllm.batch.openai_format import BatchRequest, RequestError, sampling_params_from_body, success_line
from batchllm.batch.results_file import read_results
from batchllm.batch.store import CompactRequests
from batchllm.outputs import CompletionOutput, RequestOutput
from batchllm.prefix import analyze_prefixes, collapse_repeats, repeat_prompts
from batchllm.prefix.token_arrays import TokenArrays
from batchllm.sampling_params import MAX_N

BLOCK = 16


def _output(texts: list[str], logprobs: bool = False) -> RequestOutput:
    completions = [CompletionOutput(i, text, list(range(10 + i, 10 + i + len(text))), None,
                                    [-0.5] * len(text) if logprobs else None, "length" if i else "stop")
                   for i, text in enumerate(texts)]
    return RequestOutput("7", None, [1, 2, 3, 4], completions, True)


@pytest.mark.parametrize("kind", ["chat", "completion"])
def test_success_line_has_n_choices_and_summed_usage(kind):
    output = _output(["ab", "cde", "f"], logprobs=True)
    texts = [list(c.text) for c in output.outputs]
    body = success_line("q", kind, "m", output, texts)["response"]["body"]
    choices = body["choices"]
    assert [c["index"] for c in choices] == [0, 1, 2]
    assert [c["finish_reason"] for c in choices] == ["stop", "length", "length"]
    if kind == "chat":
        assert [c["message"]["content"] for c in choices] == ["ab", "cde", "f"]
        assert [[t["token"] for t in c["logprobs"]["content"]] for c in choices] == texts
    else:
        assert [c["text"] for c in choices] == ["ab", "cde", "f"]
        assert [c["logprobs"]["tokens"] for c in choices] == texts
    assert body["usage"] == {"prompt_tokens": 4, "completion_tokens": 6, "total_tokens": 10}
    one = success_line("q", kind, "m", _output(["xy"]))["response"]["body"]
    assert len(one["choices"]) == 1 and one["choices"][0]["logprobs"] is None


def test_n_is_accepted_in_its_range():
    assert sampling_params_from_body({"n": 5}, "chat", 100).n == 5
    assert sampling_params_from_body({"n": None}, "chat", 100).n == 1
    for bad in (0, MAX_N + 1, 2.5, "2"):
        with pytest.raises(RequestError) as info:
            sampling_params_from_body({"n": bad}, "completion", 100)
        assert info.value.param == "n" and info.value.code == "invalid_parameter"
    with pytest.raises(RequestError, match=rf"\[1, {MAX_N}\]"):
        sampling_params_from_body({"n": 0}, "completion", 100)


def test_the_store_and_its_slices_keep_n():
    store = CompactRequests()
    for i, n in enumerate([1, 3, 2]):
        params = SamplingParams(n=n, max_tokens=5, temperature=0.7)
        store.add(BatchRequest(f"r{i}", "completion", params), np.arange(1, 6), max_model_len=64)
    assert store.samples_per_request().tolist() == [1, 3, 2]
    assert list(store.output_budget) == [5, 15, 10]  # every sample's output
    assert [p.n for p in store.select(np.array([2, 1])).params_list()] == [2, 3]


def test_analysis_of_repeated_prompts_maps_back_to_lines():
    rng = np.random.default_rng(0)
    shared = rng.integers(1, 500, 40).tolist()
    prompts = [shared + rng.integers(1, 500, 5).tolist(), rng.integers(1, 500, 64).tolist(),
               shared + rng.integers(1, 500, 9).tolist(), rng.integers(1, 500, 7).tolist()]
    samples = np.array([1, 4, 2, 3])
    arrays = TokenArrays.from_lists(prompts)
    expanded = repeat_prompts(arrays, samples, chunk_tokens=50)  # small chunks: several gathers
    assert [expanded.prompt(j).tolist() for j in range(expanded.num_prompts)] == \
        [p for p, n in zip(prompts, samples) for _ in range(n)]
    analysis = collapse_repeats(analyze_prefixes(expanded, block_size=BLOCK), samples)
    assert analysis.stats.prompts == 10 and analysis.stats.prompt_tokens == int((arrays.lengths * samples).sum())
    assert sorted(int(m) for g in analysis.groups for m in g.member_ids) == [0, 1, 2, 3]
    for g in analysis.groups:
        assert all(analysis.request_group[m] == g.group_id for m in g.member_ids)
    # Line 1 (64 tokens, 4 samples) is a group of its own: 3 x 48 tokens saved. Lines 0 and 2 share 32 of
    # their 40 common tokens (whole blocks), for 3 prompts: 2 x 32 saved.
    assert analysis.stats.saved_tokens == 3 * 48 + 2 * 32
    assert analysis.request_group[0] == analysis.request_group[2] != analysis.request_group[1]
    # Prompts left out (count 0) give a subset without copying the rest: the round-robin comparison's slices.
    subset = repeat_prompts(arrays, np.array([0, 2, 0, 1]))
    assert [subset.prompt(j).tolist() for j in range(3)] == [prompts[1], prompts[1], prompts[3]]


def _line(custom_id: str, url: str, **body) -> str:
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": url, "body": body})


def test_run_batch_end_to_end_through_the_cli(tmp_path, text_model):
    from batchllm.entrypoints.cli import main

    question = [{"role": "user", "content": "Name three colours, then three animals, then three fruits."}]
    prompt_ids = list(range(100, 164))  # 64 tokens: 48 shared by the samples, 16 each
    lines = [
        _line("chat-n3", "/v1/chat/completions", messages=question, n=3, max_tokens=5, temperature=0.9, seed=11,
              logprobs=True),
        _line("ids-n4", "/v1/completions", prompt=prompt_ids, n=4, max_tokens=4, temperature=0.0),
        _line("text-n1", "/v1/completions", prompt="Once upon a time", max_tokens=3, temperature=0),
        _line("n-bad", "/v1/completions", prompt="x", n=0),
    ]
    inp = tmp_path / "in.jsonl"
    inp.write_text("\n".join(lines) + "\n")
    out, summary_path = str(tmp_path / "out.jsonl"), str(tmp_path / "summary.json")
    common = ["--model", text_model, "--max-model-len", "256", "--no-progress"]
    assert main(["run-batch", "-i", str(inp), "-o", out, "--summary-json", summary_path, *common]) == 0
    results = {r["custom_id"]: r for r in read_results(out)}
    assert results["n-bad"]["error"]["code"] == "invalid_parameter" and "n: 0" in results["n-bad"]["error"]["message"]
    bodies = {cid: r["response"]["body"] for cid, r in results.items() if r["error"] is None}
    assert {cid: len(b["choices"]) for cid, b in bodies.items()} == {"chat-n3": 3, "ids-n4": 4, "text-n1": 1}
    completion_tokens = 0
    for body in bodies.values():
        assert [c["index"] for c in body["choices"]] == list(range(len(body["choices"])))
        counted = [len(c["logprobs"]["content"]) for c in body["choices"]] if body["object"] == "chat.completion" \
            else None
        usage = body["usage"]
        if counted is not None:
            assert usage["completion_tokens"] == sum(counted) and all(n > 0 for n in counted)
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
        completion_tokens += usage["completion_tokens"]
    assert bodies["ids-n4"]["usage"] == {"prompt_tokens": 64, "completion_tokens": 16, "total_tokens": 80}
    assert len({c["text"] for c in bodies["ids-n4"]["choices"]}) == 1  # greedy: four equal samples
    summary = json.load(open(summary_path))
    assert summary["succeeded"] == 3 and summary["errors"] == 1
    assert summary["completion_tokens"] == completion_tokens  # every sample's tokens
    assert summary["prompt_tokens"] == sum(b["usage"]["prompt_tokens"] for b in bodies.values())  # once per line
    # Reuse counts the samples: the 64-token prompt runs 4 times, its 48 whole shared tokens computed once.
    chat_len = bodies["chat-n3"]["usage"]["prompt_tokens"]
    analysed = 3 * chat_len + 4 * 64 + bodies["text-n1"]["usage"]["prompt_tokens"]
    saved = 2 * ((chat_len - 1) // BLOCK * BLOCK) + 3 * 48
    assert summary["prefill_tokens"] == analysed - saved
    assert summary["reuse_ratio"] == pytest.approx(saved / analysed)

    # A fresh run gives the same choices (seeded and greedy samples), whatever else is in the file.
    inp2 = tmp_path / "in2.jsonl"
    inp2.write_text("\n".join([lines[0], _line("other", "/v1/completions", prompt="Hello", n=2, max_tokens=3)]) + "\n")
    out2 = str(tmp_path / "out2.jsonl")
    assert main(["run-batch", "-i", str(inp2), "-o", out2, *common]) == 0
    again = {r["custom_id"]: r["response"]["body"] for r in read_results(out2)}
    assert [c["message"]["content"] for c in again["chat-n3"]["choices"]] == \
        [c["message"]["content"] for c in bodies["chat-n3"]["choices"]]


def test_a_replica_runs_n_samples_and_counts_all_their_tokens(tiny_models):
    from batchllm.distributed.replica import EngineReplica

    store = CompactRequests()
    for i, n in enumerate([3, 1]):
        store.add(BatchRequest(f"r{i}", "completion", SamplingParams(n=n, temperature=0.0, max_tokens=4)),
                  np.arange(1, 40) + i, max_model_len=256)
    replica = EngineReplica(dict(model=tiny_models["llama"], device="cpu", skip_tokenizer_init=True), cpu_threads=1)
    replica.submit(0, store.select(np.arange(2)))
    replica.close()
    events = [e for chunk in replica.stream() for e in chunk]
    outputs = dict(o for e in events if e[0] == "outputs" for o in e[2])
    assert [len(outputs[j].outputs) for j in (0, 1)] == [3, 1]
    [done] = [e for e in events if e[0] == "done"]
    assert done[2]["generated_tokens"] == 4 * 4
