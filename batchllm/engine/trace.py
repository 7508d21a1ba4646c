"""Per-iteration trace of the engine (tokens in the batch, prefill vs decode, KV use), cheap to keep."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import numpy as np

FIELDS = (
    "time_s",
    "batch_tokens",
    "prefill_tokens",
    "decode_tokens",
    "running",
    "kv_blocks_used",
    "kv_blocks_shared",
    "preemptions",
)


@dataclass
class IterationTrace:
    """Columns grow by appending one row per iteration (numpy-backed, doubled when full)."""

    label: str = ""
    _rows: np.ndarray = field(default_factory=lambda: np.zeros((1024, len(FIELDS)), dtype=np.float64))
    _count: int = 0
    _start: float = field(default_factory=time.perf_counter)

    def record(self, *, batch_tokens, prefill_tokens, decode_tokens, running, kv_blocks_used, kv_blocks_shared,
               preemptions) -> None:
        if self._count == len(self._rows):
            self._rows = np.concatenate([self._rows, np.zeros_like(self._rows)])
        self._rows[self._count] = (time.perf_counter() - self._start, batch_tokens, prefill_tokens, decode_tokens,
                                   running, kv_blocks_used, kv_blocks_shared, preemptions)
        self._count += 1

    def __len__(self) -> int:
        return self._count

    def column(self, name: str) -> np.ndarray:
        return self._rows[: self._count, FIELDS.index(name)]

    def to_dict(self) -> dict:
        return {"label": self.label, **{name: self.column(name).tolist() for name in FIELDS}}

    def save(self, path: str) -> None:
        with open(path, "w") as f:
            json.dump(self.to_dict(), f)


def load_trace(path: str) -> dict:
    with open(path) as f:
        data = json.load(f)
    missing = [name for name in FIELDS if name not in data]
    if missing:
        raise ValueError(f"{path}: not a batchllm trace (missing {missing})")
    return data
