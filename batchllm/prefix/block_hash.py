"""Vectorised gathering and hashing of fixed-size token blocks.

Both the prefix tree (which sorts prompts block by block) and the LRU simulation (which keys a cache by
chained block hashes, like vLLM's automatic prefix caching) use these helpers.
"""

from __future__ import annotations

import numpy as np

# Positions past a prompt's end read as PAD: it is below every token id, so a prompt sorts before its extensions.
PAD = -1
HASH_BLOCK = 16  # tokens per block of the tree construction (independent of the KV block size)

_MULTIPLIERS: dict[int, np.ndarray] = {}


def _multipliers(width: int) -> np.ndarray:
    # Random odd 64-bit multipliers (fixed seed: results are reproducible): a random linear form over the
    # block is a universal hash of it.
    if width not in _MULTIPLIERS:
        rng = np.random.default_rng(0x5EED_B10C + width)
        _MULTIPLIERS[width] = rng.integers(0, 2**63 - 1, size=width, dtype=np.int64) | 1
    return _MULTIPLIERS[width]


def gather_blocks(
    tokens: np.ndarray, starts: np.ndarray, limits: np.ndarray, width: int = HASH_BLOCK
) -> np.ndarray:
    """Rows ``tokens[starts[r] : starts[r] + width]`` as an (rows, width) int32 array, PAD at and after ``limits[r]``.

    limits are absolute positions (exclusive); rows with starts >= limits are all PAD.
    """
    rows = len(starts)
    out = np.full((rows, width), PAD, dtype=np.int32)
    if rows == 0 or len(tokens) == 0:
        return out
    full = limits - starts >= width
    if full.any():
        # A strided window view gathers whole rows in one fancy-index call (no per-token index array).
        windows = np.lib.stride_tricks.sliding_window_view(tokens, width) if len(tokens) >= width else None
        if windows is not None:
            out[full] = windows[starts[full]]
        else:  # pragma: no cover - only when the whole corpus is shorter than one block
            full[:] = False
    partial = ~full & (limits > starts)
    if partial.any():
        p_starts = starts[partial]
        p_counts = limits[partial] - p_starts
        cols = np.arange(width)
        idx = p_starts[:, None] + cols
        valid = cols < p_counts[:, None]
        block = np.where(valid, tokens[np.minimum(idx, len(tokens) - 1)], PAD)
        out[partial] = block
    return out


def hash_rows(blocks: np.ndarray) -> np.ndarray:
    """A 64-bit hash (as uint64) of each row of an (rows, width) int32 array, well mixed in every bit."""
    linear = blocks.astype(np.int64) @ _multipliers(blocks.shape[1])  # wraps modulo 2**64, as intended
    return mix64(linear.view(np.uint64))


def mix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser: every output bit depends on every input bit, so truncated hashes stay good."""
    x = x.astype(np.uint64, copy=True)
    with np.errstate(over="ignore"):
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return x


def lexicographic_order(blocks: np.ndarray, major_key: np.ndarray | None = None) -> np.ndarray:
    """Indices that sort rows of an int32 (rows, width) array lexicographically (PAD first), major_key first.

    Pairs of columns are packed into one uint64 key (ids + 1 fit 32 bits each), halving the lexsort passes.
    """
    shifted = blocks.astype(np.int64) + 1  # PAD -> 0, ids -> 1..2**31-1
    width = blocks.shape[1]
    keys = []
    for col in range(0, width, 2):
        if col + 1 < width:
            keys.append(((shifted[:, col] << 32) | shifted[:, col + 1]).view(np.uint64))
        else:
            keys.append(shifted[:, col])
    keys.reverse()  # np.lexsort sorts by the last key first
    if major_key is not None:
        keys.append(major_key)
    return np.lexsort(tuple(keys))


def common_prefix_len(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per row, how many leading columns of a and b are equal (width if all)."""
    diff = a != b
    any_diff = diff.any(axis=1)
    return np.where(any_diff, diff.argmax(axis=1), a.shape[1])
