"""Checks of user input done before any compute; every message names the request index and field."""

from __future__ import annotations

from typing import Any

import numpy as np

from batchllm.sampling_params import SamplingParams, not_token_ids


def prompt_errors(index: int, token_ids: list[int], vocab_size: int, max_model_len: int) -> list[str]:
    if len(token_ids) == 0:
        return [f"request {index}: prompt: is empty (it must have at least one token)"]
    errors = []
    if len(token_ids) >= max_model_len:
        errors.append(
            f"request {index}: prompt: {len(token_ids)} tokens, but max_model_len={max_model_len} leaves no room "
            "for output (shorten the prompt or raise max_model_len)"
        )
    bad = _bad_token_ids(token_ids, vocab_size)
    if bad:
        errors.append(
            f"request {index}: prompt_token_ids: {bad[:5]} {'...' if len(bad) > 5 else ''}outside the vocabulary "
            f"[0, {vocab_size})"
        )
    return errors


def _bad_token_ids(token_ids: list[int], vocab_size: int) -> list:
    """Entries that are not ints in [0, vocab_size) (bools are not token ids)."""
    if set(map(type, token_ids)) <= {int}:  # the usual case: one C-speed range check instead of a Python loop
        try:
            ids = np.fromiter(token_ids, dtype=np.int64, count=len(token_ids))
        except OverflowError:
            ids = None
        if ids is not None and (len(ids) == 0 or (ids.min() >= 0 and ids.max() < vocab_size)):
            return []
    return not_token_ids(token_ids, vocab_size)


def sampling_errors(index: int, params: Any, vocab_size: int) -> list[str]:
    if isinstance(params, dict):
        return [f"request {index}: sampling_params: got a dict d; pass SamplingParams(**d) instead"]
    if not isinstance(params, SamplingParams):
        return [f"request {index}: sampling_params: expected SamplingParams, got {type(params).__name__}"]
    return [f"request {index}: {e}" for e in params.validation_errors(vocab_size)]


def raise_if_errors(errors: list[str]) -> None:
    if errors:
        shown = errors[:20]
        more = f"\n... and {len(errors) - 20} more" if len(errors) > 20 else ""
        raise ValueError("invalid input, nothing was run:\n" + "\n".join(shown) + more)
