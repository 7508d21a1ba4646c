"""Fuzz: batch files of random lines never stop the job, each line gets exactly one result line, and every
good line succeeds.

Lines are arbitrary JSON values, random bytes, lone surrogates, deep nesting, huge numbers, and requests
whose every body field (and prompt field, and custom_id) takes random values of random types, mixed with
good requests. CI runs ``FUZZ_EXAMPLES`` files of ``LINES_PER_FILE`` lines; set BATCHLLM_FUZZ_EXAMPLES for a
longer run and BATCHLLM_FUZZ_SEED for other files (docs/robustness.md records one).
"""

from __future__ import annotations

import json
import os

import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from batchllm.batch.chat_bodies import CHAT_FIELDS
from batchllm.batch.openai_format import DEFAULT_ONLY, IGNORED_FIELDS, SAMPLING_FIELDS
from batchllm.batch.results_file import read_results

FUZZ_EXAMPLES = int(os.environ.get("BATCHLLM_FUZZ_EXAMPLES", "10"))
FUZZ_SEED = os.environ.get("BATCHLLM_FUZZ_SEED")  # unset: derandomized (the same files on every CI run)
LINES_PER_FILE = 40
MAX_MODEL_LEN = 48  # keeps requests with a huge or absent max_tokens short
BODY_FIELDS = sorted(SAMPLING_FIELDS | set(DEFAULT_ONLY) | IGNORED_FIELDS | CHAT_FIELDS | {"priority", "unknown_field"})
URLS = ["/v1/completions", "/v1/chat/completions", "/v1/embeddings", "", None]

# Every code point, lone surrogates included (hypothesis leaves them out by default).
any_text = st.text(st.characters(exclude_categories=()), max_size=12)
numbers = st.one_of(st.integers(), st.integers(min_value=2**62, max_value=2**80), st.integers(max_value=-(2**62)),
                    st.floats(allow_nan=True, allow_infinity=True))
json_scalars = st.one_of(st.none(), st.booleans(), numbers, any_text)
json_values = st.recursive(json_scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                                 st.dictionaries(any_text, inner, max_size=4)),
                           max_leaves=12)


def _dumps(value, ascii_only: bool) -> bytes:
    # ensure_ascii=True writes a lone surrogate as a \\ud800 escape, as other JSON writers do.
    return json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


@st.composite
def good_line(draw, index: int) -> dict:
    body = {"max_tokens": draw(st.integers(1, 3)), "temperature": draw(st.sampled_from([0, 0.7, 1.0]))}
    if draw(st.booleans()):
        body["seed"] = draw(st.integers(-(2**63), 2**63 - 1))
    kind = draw(st.sampled_from(["ids", "text", "chat"]))
    if kind == "chat":
        body["messages"] = [{"role": "user", "content": draw(st.text("abc xyz", min_size=1, max_size=20))}]
        url = "/v1/chat/completions"
    else:
        body["prompt"] = (draw(st.lists(st.integers(1, 500), min_size=1, max_size=12)) if kind == "ids"
                          else draw(st.text("abcdef ghij", min_size=1, max_size=30)))
        url = "/v1/completions"
    return {"custom_id": f"good-{index}", "method": "POST", "url": url, "body": body}


@st.composite
def fuzzed_request(draw) -> dict:
    """A request-shaped line whose fields take random values of random types."""
    body = {key: draw(json_values) for key in draw(st.lists(st.sampled_from(BODY_FIELDS), max_size=6, unique=True))}
    prompt_key = draw(st.sampled_from(["prompt", "messages", "prompt_token_ids", None]))
    if prompt_key is not None:
        body[prompt_key] = draw(st.one_of(json_values, st.just("hi"), st.lists(st.integers(-5, 2**40), max_size=4),
                                          st.just([{"role": "user", "content": "hi"}])))
    line = {"body": body} if draw(st.booleans()) else dict(body)
    if draw(st.booleans()):
        line["url"] = draw(st.sampled_from(URLS))
    custom_id = draw(st.one_of(st.none(), st.just(f"fuzz-{draw(st.integers(0, 5))}"), json_values))
    if custom_id is not None:
        line["custom_id"] = custom_id
    return line


@st.composite
def one_field_fuzzed(draw) -> dict:
    """A good request with one body field set to a random value: it reaches validation, often the engine."""
    line = draw(good_line(-1))
    line["custom_id"] = "one-field"
    line["body"][draw(st.sampled_from(BODY_FIELDS))] = draw(st.one_of(json_values, numbers))
    return line


def _nested(depth: int) -> bytes:
    return b'{"custom_id": "deep", "prompt": ' + b"[" * depth + b"]" * depth + b"}"


bad_line = st.one_of(
    json_values.map(lambda v: (v, False)),
    fuzzed_request().map(lambda v: (v, False)),
    fuzzed_request().map(lambda v: (v, True)),
    one_field_fuzzed().map(lambda v: (v, False)),
    st.binary(max_size=40),
    st.integers(500, 60_000).map(_nested),
    st.integers(4000, 6000).map(lambda n: b'{"prompt": "x", "max_tokens": ' + b"9" * n + b"}"),
    st.sampled_from([b"\xef\xbb\xbf{}", b"\xff\xfe", b'{"prompt": "\\udc80"}', b'{"custom_id": "\\ud800"}',
                     b"NaN", b"[]", b'"just a string"']),
)


@st.composite
def batch_file(draw) -> tuple[list[bytes], set[str]]:
    lines, good = [], set()
    for i in range(LINES_PER_FILE):
        if draw(st.integers(0, 3)) == 0:
            lines.append(_dumps(draw(good_line(i)), ascii_only=False))
            good.add(f"good-{i}")
            continue
        item = draw(bad_line)
        if isinstance(item, tuple):
            value, ascii_only = item
            if isinstance(value, dict) and str(value.get("custom_id", "")).startswith("good-"):
                value["custom_id"] = "not-good"
            item = _dumps(value, ascii_only)
        lines.append(item.replace(b"\n", b" ").replace(b"\r", b" "))
    return lines, good


def _expected_result_lines(lines: list[bytes]) -> int:
    """The reader skips blank lines (only ASCII whitespace, a BOM at the start of the file aside)."""
    first = lines[0][3:] if lines and lines[0].startswith(b"\xef\xbb\xbf") else (lines[0] if lines else b"")
    return sum(1 for line in [first, *lines[1:]] if line.strip())


@pytest.fixture(scope="module")
def fuzz_llm(text_model):
    from batchllm import LLM

    return LLM(text_model, max_model_len=MAX_MODEL_LEN, max_num_seqs=16)


def _check(lines: list[bytes], good: set[str], results: list[dict]) -> None:
    assert len(results) == _expected_result_lines(lines)
    status = {}
    for r in results:
        status.setdefault(r["custom_id"], []).append(r["response"]["status_code"])
    for cid in good:
        assert status.get(cid) == [200], (cid, status.get(cid), [r for r in results if r["custom_id"] == cid])


def _fuzz_settings(test):
    test = settings(max_examples=FUZZ_EXAMPLES, deadline=None, derandomize=FUZZ_SEED is None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.function_scoped_fixture])(test)
    return test if FUZZ_SEED is None else seed(int(FUZZ_SEED))(test)


@_fuzz_settings
@given(batch=batch_file())
def test_random_lines_each_get_one_result_and_good_lines_succeed(batch, fuzz_llm, tmp_path_factory):
    from batchllm.batch import run_batch_file

    lines, good = batch
    folder = tmp_path_factory.mktemp("fuzz")
    inp, out = str(folder / "in.jsonl"), str(folder / "out.jsonl")
    with open(inp, "wb") as f:
        f.write(b"\n".join(lines) + b"\n")
    run_batch_file(fuzz_llm, inp, out, progress=False, log=lambda message: None)
    _check(lines, good, read_results(out))
    assert run_batch_file(fuzz_llm, inp, out, progress=False, log=lambda m: None).to_run == 0  # resumed: all done


def test_the_cli_exits_0_on_a_file_of_random_lines(tmp_path, text_model):
    from batchllm.entrypoints.cli import main

    lines, good = _fixed_file()
    inp, out = tmp_path / "in.jsonl", str(tmp_path / "out.jsonl")
    inp.write_bytes(b"\n".join(lines) + b"\n")
    assert main(["run-batch", "-i", str(inp), "-o", out, "--model", text_model, "--max-model-len",
                 str(MAX_MODEL_LEN), "--no-progress"]) == 0
    _check(lines, good, read_results(out))


def _fixed_file() -> tuple[list[bytes], set[str]]:
    """One file of every bad kind above, and good lines between them (deterministic, for the CLI)."""
    bad = [b"\xff\xfe", b"[" * 50_000 + b"]" * 50_000, b'{"prompt": "x", "max_tokens": ' + b"9" * 5000 + b"}",
           b'{"custom_id": "\\ud800", "prompt": "x"}', b'{"prompt": "\\udc80"}', b"NaN", b"[]",
           json.dumps({"custom_id": "s", "prompt": "x", "seed": 2**64, "temperature": 1}).encode(),
           json.dumps({"custom_id": "t", "prompt": "x", "temperature": float("nan")}).encode(),
           json.dumps({"prompt": "x", "top_k": 10**30, "max_tokens": 2}).encode(),
           json.dumps({"prompt": [1, 2], "max_tokens": {"a": [1]}, "stop": [None]}).encode()]
    lines, good = [], set()
    for i, line in enumerate(bad):
        lines += [line, json.dumps({"custom_id": f"good-{i}", "prompt": [5, 6, 7], "max_tokens": 2,
                                    "temperature": 0}).encode()]
        good.add(f"good-{i}")
    return lines, good
