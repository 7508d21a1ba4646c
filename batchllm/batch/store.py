"""The runnable requests of a batch, kept compact while the whole file is read and analysed.

Prompts are one flat int32 token array (4 bytes a token); per request there is a custom_id string and a few
array entries; SamplingParams are interned (identical requests share one object), with derived seeds kept
apart so that they do not defeat the interning.
"""

from __future__ import annotations

import dataclasses
from array import array
from dataclasses import dataclass
from typing import Optional

import numpy as np

from batchllm.batch.openai_format import BatchRequest
from batchllm.prefix.token_arrays import TokenArraysBuilder
from batchllm.sampling_params import SamplingParams


def with_seed(params: SamplingParams, seed: int) -> SamplingParams:
    """Interned params with a request's derived seed (seed < 0: none was derived; the params keep theirs)."""
    return params if seed < 0 else dataclasses.replace(params, seed=seed)


class CompactRequests(TokenArraysBuilder):
    """Request i: custom_ids[i], kind(i), params(i), model(i), tokens[offsets[i]:offsets[i + 1]]."""

    def __init__(self) -> None:
        super().__init__()
        self.custom_ids: list[str] = []
        self.kinds = bytearray()  # 1 chat, 0 completion
        self.param_index = array("i")
        self.seeds = array("q")  # derived seed, or -1 (the interned params carry the request's own seed)
        self.model_index = array("i")
        self.output_budget = array("q")  # max output tokens, over all n samples (memory plan, work-unit costs)
        self._params: list[SamplingParams] = []
        self._params_keys: dict[str, int] = {}
        self._models: list[Optional[str]] = []
        self._model_keys: dict[Optional[str], int] = {}

    def __len__(self) -> int:
        return len(self.custom_ids)

    def add(self, request: BatchRequest, ids: np.ndarray, max_model_len: int) -> None:
        params = request.params
        seed = -1
        if request.seed_derived:
            seed = params.seed
            params = dataclasses.replace(params, seed=None)
        key = repr(params)
        index = self._params_keys.get(key)
        if index is None:
            index = self._params_keys[key] = len(self._params)
            self._params.append(params)
        model_idx = self._model_keys.get(request.model)
        if model_idx is None:
            model_idx = self._model_keys[request.model] = len(self._models)
            self._models.append(request.model)
        budget = params.output_budget(len(ids), max_model_len)
        self.append(ids)  # first: the only step that can fail on a bad prompt, before any per-request array grows
        self.custom_ids.append(request.custom_id)
        self.kinds.append(1 if request.kind == "chat" else 0)
        self.param_index.append(index)
        self.seeds.append(seed)
        self.model_index.append(model_idx)
        # n samples generate n outputs (each sample's KV beyond the shared prompt is its own).
        self.output_budget.append(min(budget * params.n, 2**63 - 1))

    def params(self, i: int) -> SamplingParams:
        return with_seed(self._params[self.param_index[i]], int(self.seeds[i]))

    def samples_per_request(self) -> np.ndarray:
        """``n`` of each request (int64): how many samples, i.e. engine requests of one prompt, it runs as."""
        table = np.array([p.n for p in self._params] or [1], dtype=np.int64)
        return table[np.frombuffer(self.param_index, dtype=np.int32)] if len(self) else np.zeros(0, np.int64)

    def model(self, i: int) -> Optional[str]:
        return self._models[self.model_index[i]]

    def kind(self, i: int) -> str:
        return "chat" if self.kinds[i] else "completion"

    def select(self, ids: np.ndarray, offsets: Optional[np.ndarray] = None) -> "RequestSlice":
        """Requests ``ids`` as arrays (what a data-parallel replica is sent); ``offsets``: this store's
        offsets when the caller already has them (computing them walks every request)."""
        ids = np.asarray(ids, dtype=np.int64)
        offsets = self.offsets if offsets is None else offsets
        starts, lengths = offsets[ids], offsets[ids + 1] - offsets[ids]
        local = np.zeros(len(ids) + 1, dtype=np.int64)
        np.cumsum(lengths, out=local[1:])
        gather = np.repeat(starts - local[:-1], lengths) + np.arange(local[-1], dtype=np.int64)
        param_index = np.frombuffer(self.param_index, dtype=np.int32)[ids]
        used = np.unique(param_index)
        return RequestSlice(
            tokens=self.tokens[gather],
            offsets=local,
            param_table=tuple(self._params[int(k)] for k in used),
            param_index=np.searchsorted(used, param_index).astype(np.int32),
            seeds=np.frombuffer(self.seeds, dtype=np.int64)[ids],
        )


@dataclass(frozen=True)
class RequestSlice:
    """Some requests of a store as flat arrays: prompts tokens[offsets[j]:offsets[j + 1]], params
    param_table[param_index[j]] with seed seeds[j] when seeds[j] >= 0 (a seed derived for that request)."""

    tokens: np.ndarray  # int32
    offsets: np.ndarray  # int64, len + 1
    param_table: tuple[SamplingParams, ...]
    param_index: np.ndarray  # int32
    seeds: np.ndarray  # int64

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def encoded(self) -> list[tuple[None, list[int]]]:
        """(text, token ids) per request, as ``LLM.run_encoded`` takes them."""
        tokens, bounds = self.tokens, self.offsets.tolist()
        return [(None, tokens[bounds[j]: bounds[j + 1]].tolist()) for j in range(len(self))]

    def params_list(self) -> list[SamplingParams]:
        table = self.param_table
        return [with_seed(table[k], seed) for k, seed in zip(self.param_index.tolist(), self.seeds.tolist())]
