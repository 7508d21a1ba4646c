"""Tokenizer loading from a Hugging Face folder or a GGUF file (through `transformers`)."""

from __future__ import annotations

import functools
import glob
import os

from transformers import AutoTokenizer, PreTrainedTokenizerBase


def is_gguf_path(model: str) -> bool:
    return model.endswith(".gguf") and os.path.isfile(model)


@functools.lru_cache(maxsize=4)
def gguf_hf_config(path: str):
    """transformers' config for a GGUF file, parsed once: each parse reads the whole file's metadata (seconds)."""
    from transformers import AutoConfig

    folder, name = os.path.split(os.path.abspath(path))
    return AutoConfig.from_pretrained(folder, gguf_file=name, trust_remote_code=False)


# Files one of which a local folder needs for AutoTokenizer to build anything from it.
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt",
                    "spiece.model", "*.tiktoken")
_SKIP_HINT = "pass tokenizer=<folder with one>, or skip_tokenizer_init=True to give prompts as prompt_token_ids"


def load_tokenizer(model: str) -> PreTrainedTokenizerBase:
    """The tokenizer of a model folder or .gguf file; ValueError naming the path (and the way out) if it has none.

    trust_remote_code=False always: transformers would otherwise ask on a terminal (or fail) for folders
    that ship their own tokenizer code, and we never run such code.
    """
    gguf = is_gguf_path(model)
    if not gguf and not os.path.isdir(model):
        raise ValueError(f"model={model!r}: no such folder or .gguf file")
    if not gguf and not any(glob.glob(os.path.join(glob.escape(model), name)) for name in _TOKENIZER_FILES):
        raise ValueError(f"model={model!r}: the folder has no tokenizer files ({', '.join(_TOKENIZER_FILES)}); "
                         + _SKIP_HINT)
    try:
        if gguf:
            folder, name = os.path.split(os.path.abspath(model))
            return AutoTokenizer.from_pretrained(folder, gguf_file=name, trust_remote_code=False)
        return AutoTokenizer.from_pretrained(model, trust_remote_code=False)
    except (OSError, TypeError, KeyError, ValueError) as err:
        raise ValueError(f"model={model!r}: could not load a tokenizer from it ({err}); {_SKIP_HINT}") from err
