"""Model folders are read defensively: shard names stay inside the folder, no remote code, no tokenizer needed."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from batchllm import LLM, SamplingParams
from batchllm.model.loader import _safetensors_files
from tests.conftest import build_tiny_model, hf_greedy, mixed_prompts


@pytest.fixture(scope="module")
def sharded(tmp_path_factory) -> str:
    folder = str(tmp_path_factory.mktemp("sharded") / "qwen3")
    return build_tiny_model(folder, "qwen3", max_shard_size="100KB")


@pytest.fixture
def sharded_copy(sharded, tmp_path) -> str:
    folder = str(tmp_path / "model")
    shutil.copytree(sharded, folder)
    return folder


def _index_path(folder: str) -> str:
    return os.path.join(folder, "model.safetensors.index.json")


def _rewrite_index(folder: str, edit) -> None:
    with open(_index_path(folder)) as f:
        index = json.load(f)
    edit(index)
    with open(_index_path(folder), "w") as f:
        json.dump(index, f)


def test_index_lists_real_shards(sharded):
    files = _safetensors_files(sharded)
    assert len(files) > 1 and all(os.path.isfile(f) and f.endswith(".safetensors") for f in files)


@pytest.mark.parametrize("shard", ["../../etc/passwd", "/etc/passwd", "sub/../../outside.safetensors", ".."])
def test_shard_outside_the_folder_is_refused(sharded_copy, shard):
    def point_one_tensor_outside(index):
        name = next(iter(index["weight_map"]))
        index["weight_map"][name] = shard

    _rewrite_index(sharded_copy, point_one_tensor_outside)
    with pytest.raises(ValueError, match=rf"shard {shard!r} resolves outside the model folder '{sharded_copy}'"):
        LLM(sharded_copy, device="cpu", skip_tokenizer_init=True)


def test_shard_through_a_symlinked_directory_is_refused(sharded_copy, tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    shard = sorted(f for f in os.listdir(sharded_copy) if f.endswith(".safetensors"))[0]
    shutil.copy(os.path.join(sharded_copy, shard), outside / shard)
    os.symlink(outside, os.path.join(sharded_copy, "linked"))
    _rewrite_index(sharded_copy, lambda index: index["weight_map"].update(
        {k: f"linked/{shard}" for k, v in index["weight_map"].items() if v == shard}))
    with pytest.raises(ValueError, match="resolves outside the model folder"):
        _safetensors_files(sharded_copy)


def test_symlinked_shard_files_load_like_the_hf_cache(sharded, tmp_path):
    """The Hugging Face cache links a snapshot's files to blobs outside the snapshot folder: that is fine."""
    blobs, snapshot = tmp_path / "blobs", tmp_path / "snapshot"
    blobs.mkdir()
    snapshot.mkdir()
    for name in os.listdir(sharded):
        shutil.copy(os.path.join(sharded, name), blobs / name)
        os.symlink(blobs / name, snapshot / name)
    prompts = mixed_prompts(seed=2, count=2)
    llm = LLM(str(snapshot), device="cpu", skip_tokenizer_init=True)
    got = llm.generate([{"prompt_token_ids": p} for p in prompts], SamplingParams(temperature=0, max_tokens=5),
                       use_tqdm=False)
    assert [o.outputs[0].token_ids for o in got] == hf_greedy(sharded, prompts, 5)


def test_missing_shard_is_named(sharded_copy):
    shard = sorted(f for f in os.listdir(sharded_copy) if f.endswith(".safetensors"))[1]
    os.remove(os.path.join(sharded_copy, shard))
    with pytest.raises(ValueError, match=rf"shard '{shard}' does not exist in the model folder"):
        LLM(sharded_copy, device="cpu", skip_tokenizer_init=True)


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", r"model.safetensors.index.json: not valid JSON"),
        (json.dumps({"metadata": {}}), r"model.safetensors.index.json: no 'weight_map' object"),
        (json.dumps([1, 2]), r"model.safetensors.index.json: no 'weight_map' object"),
        (json.dumps({"weight_map": {"a": 3}}), r"model.safetensors.index.json: weight_map value 3 is not a shard"),
    ],
)
def test_malformed_index_names_the_file(sharded_copy, content, message):
    with open(_index_path(sharded_copy), "w") as f:
        f.write(content)
    with pytest.raises(ValueError, match=message):
        _safetensors_files(sharded_copy)


def test_folder_without_tokenizer_runs_from_token_ids(tiny_models):
    folder = tiny_models["mistral"]
    assert not any("tokenizer" in name or name.startswith("vocab") for name in os.listdir(folder))
    prompts = mixed_prompts(seed=3, count=3)
    llm = LLM(folder, device="cpu", skip_tokenizer_init=True)
    assert llm.get_tokenizer() is None
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], SamplingParams(temperature=0, max_tokens=8),
                           use_tqdm=False)
    assert [o.outputs[0].token_ids for o in outputs] == hf_greedy(folder, prompts, 8)
    assert all(o.outputs[0].text == "" for o in outputs)


def test_folder_without_tokenizer_names_the_fix(tiny_models):
    with pytest.raises(ValueError, match=r"has no tokenizer files .*skip_tokenizer_init=True"):
        LLM(tiny_models["mistral"], device="cpu")


def test_unloadable_tokenizer_names_the_fix(tmp_path, tiny_models):
    shutil.copytree(tiny_models["mistral"], tmp_path / "model")
    (tmp_path / "model" / "tokenizer_config.json").write_text("{broken")
    with pytest.raises(ValueError, match=r"could not load a tokenizer from it .*skip_tokenizer_init=True"):
        LLM(str(tmp_path / "model"), device="cpu")


def test_from_pretrained_never_trusts_remote_code(monkeypatch, tmp_path, tiny_models):
    import transformers

    from batchllm.model import tokenizer as tokenizer_module

    calls = []

    def record(*args, **kwargs):
        calls.append(kwargs)
        raise OSError("stop here")

    monkeypatch.setattr(tokenizer_module.AutoTokenizer, "from_pretrained", record)
    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", record)
    folder = tmp_path / "model"
    shutil.copytree(tiny_models["mistral"], folder)
    (folder / "tokenizer.json").write_text("{}")
    (tmp_path / "fake.gguf").write_bytes(b"GGUF")
    tokenizer_module.gguf_hf_config.cache_clear()
    for path in (str(folder), str(tmp_path / "fake.gguf")):
        with pytest.raises(ValueError):
            tokenizer_module.load_tokenizer(path)
    with pytest.raises(OSError):
        tokenizer_module.gguf_hf_config(str(tmp_path / "fake.gguf"))
    tokenizer_module.gguf_hf_config.cache_clear()
    assert len(calls) == 3 and all(kwargs.get("trust_remote_code") is False for kwargs in calls)
