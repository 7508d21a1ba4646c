"""Prompts as one flat token array plus offsets: the vectorised input of the prefix analysis.

A million Python lists of a thousand ints would take ~30 GB; a flat int32 array takes 4 GB for 1e9 tokens.
"""

from __future__ import annotations

from array import array

from dataclasses import dataclass
from typing import Sequence, Union

import numpy as np


@dataclass(frozen=True, eq=False)
class TokenArrays:
    """Prompt i is ``tokens[offsets[i]:offsets[i + 1]]``.

    tokens: 1-D int32 array of non-negative token ids.
    offsets: 1-D int64 array of length num_prompts + 1, non-decreasing, offsets[0] == 0, offsets[-1] == len(tokens).
    """

    tokens: np.ndarray
    offsets: np.ndarray

    def __post_init__(self) -> None:
        if self.tokens.ndim != 1 or self.offsets.ndim != 1:
            raise ValueError("tokens and offsets must be 1-D arrays")
        if self.tokens.dtype != np.int32:
            raise ValueError(f"tokens must be int32, got {self.tokens.dtype}; use TokenArrays.from_any")
        if self.offsets.dtype != np.int64:
            raise ValueError(f"offsets must be int64, got {self.offsets.dtype}")
        if len(self.offsets) == 0 or self.offsets[0] != 0 or self.offsets[-1] != len(self.tokens):
            raise ValueError("offsets must start at 0 and end at len(tokens)")
        if len(self.offsets) > 1 and np.any(np.diff(self.offsets) < 0):
            raise ValueError("offsets must be non-decreasing")

    @property
    def num_prompts(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    @property
    def num_tokens(self) -> int:
        return int(self.offsets[-1])

    def prompt(self, i: int) -> np.ndarray:
        return self.tokens[self.offsets[i] : self.offsets[i + 1]]

    @classmethod
    def from_lists(cls, prompts: Sequence[Sequence[int]]) -> "TokenArrays":
        lengths = np.fromiter((len(p) for p in prompts), dtype=np.int64, count=len(prompts))
        offsets = np.zeros(len(prompts) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        if offsets[-1] == 0:
            tokens = np.zeros(0, dtype=np.int32)
        else:
            tokens = np.concatenate([np.asarray(p, dtype=np.int64) for p in prompts if len(p)])
            _check_token_range(tokens)
            tokens = tokens.astype(np.int32)
        return cls(tokens, offsets)

    @classmethod
    def from_any(cls, prompts: Union["TokenArrays", Sequence[Sequence[int]]]) -> "TokenArrays":
        """Accept TokenArrays, a (tokens, offsets) pair of arrays, or a sequence of token-id sequences."""
        if isinstance(prompts, TokenArrays):
            return prompts
        if isinstance(prompts, tuple) and len(prompts) == 2 and all(isinstance(a, np.ndarray) for a in prompts):
            tokens, offsets = prompts
            if tokens.dtype != np.int32:
                _check_token_range(tokens)
                tokens = tokens.astype(np.int32)
            return cls(tokens, np.asarray(offsets, dtype=np.int64))
        return cls.from_lists(prompts)


def _check_token_range(tokens: np.ndarray) -> None:
    # Negative ids are reserved: the tree pads short blocks with -1 so that a prefix sorts before its extensions.
    if len(tokens) and (tokens.min() < 0 or tokens.max() > np.iinfo(np.int32).max - 1):
        raise ValueError("token ids must be in [0, 2**31 - 2]")


class TokenArraysBuilder:
    """Appends prompts one at a time into compact buffers (no Python list per prompt); `build()` views them."""

    def __init__(self) -> None:
        self._tokens = array("i")
        self._lengths = array("q")

    def __len__(self) -> int:
        return len(self._lengths)

    def append(self, ids) -> None:
        """Add one prompt: a sequence of ints or an integer numpy array."""
        if isinstance(ids, np.ndarray):
            self._tokens.frombytes(ids.astype(np.int32, copy=False).tobytes())
        else:
            self._tokens.extend(ids)
        self._lengths.append(len(ids))

    @property
    def tokens(self) -> np.ndarray:
        return np.frombuffer(self._tokens, dtype=np.int32) if len(self._tokens) else np.zeros(0, np.int32)

    @property
    def offsets(self) -> np.ndarray:
        offsets = np.zeros(len(self._lengths) + 1, dtype=np.int64)
        if len(self._lengths):
            np.cumsum(np.frombuffer(self._lengths, dtype=np.int64), out=offsets[1:])
        return offsets

    def build(self) -> TokenArrays:
        return TokenArrays(self.tokens, self.offsets)
