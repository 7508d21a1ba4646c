"""Tokenizer loading from a Hugging Face folder or a GGUF file (through `transformers`)."""

from __future__ import annotations

import functools
import os

from transformers import AutoTokenizer, PreTrainedTokenizerBase


def is_gguf_path(model: str) -> bool:
    return model.endswith(".gguf") and os.path.isfile(model)


@functools.lru_cache(maxsize=4)
def gguf_hf_config(path: str):
    """transformers' config for a GGUF file, parsed once: each parse reads the whole file's metadata (seconds)."""
    from transformers import AutoConfig

    folder, name = os.path.split(os.path.abspath(path))
    return AutoConfig.from_pretrained(folder, gguf_file=name)


def load_tokenizer(model: str) -> PreTrainedTokenizerBase:
    """The tokenizer of a model folder or .gguf file; ValueError naming the path if it has none."""
    try:
        if is_gguf_path(model):
            folder, name = os.path.split(os.path.abspath(model))
            return AutoTokenizer.from_pretrained(folder, gguf_file=name)
        if not os.path.isdir(model):
            raise ValueError(f"model={model!r}: no such folder or .gguf file")
        return AutoTokenizer.from_pretrained(model)
    except (OSError, TypeError, KeyError) as err:
        raise ValueError(f"model={model!r}: could not load a tokenizer from it ({err})") from err
