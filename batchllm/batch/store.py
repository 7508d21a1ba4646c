"""The runnable requests of a batch, kept compact while the whole file is read and analysed.

Prompts are one flat int32 token array (4 bytes a token); per request there is a custom_id string and a few
array entries; SamplingParams are interned (identical requests share one object), with derived seeds kept
apart so that they do not defeat the interning.
"""

from __future__ import annotations

import dataclasses
from array import array
from typing import Optional

import numpy as np

from batchllm.batch.openai_format import BatchRequest
from batchllm.prefix.token_arrays import TokenArraysBuilder
from batchllm.sampling_params import SamplingParams


class CompactRequests(TokenArraysBuilder):
    """Request i: custom_ids[i], kind(i), params(i), model(i), tokens[offsets[i]:offsets[i + 1]]."""

    def __init__(self) -> None:
        super().__init__()
        self.custom_ids: list[str] = []
        self.kinds = bytearray()  # 1 chat, 0 completion
        self.param_index = array("i")
        self.seeds = array("q")  # derived seed, or -1 (the interned params carry the request's own seed)
        self.model_index = array("i")
        self.output_budget = array("q")  # max output tokens (for the memory plan)
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
        self.output_budget.append(min(budget, 2**63 - 1))

    def params(self, i: int) -> SamplingParams:
        params = self._params[self.param_index[i]]
        seed = self.seeds[i]
        return params if seed < 0 else dataclasses.replace(params, seed=int(seed))

    def model(self, i: int) -> Optional[str]:
        return self._models[self.model_index[i]]

    def kind(self, i: int) -> str:
        return "chat" if self.kinds[i] else "completion"
