"""Mutable state of one request as it moves through the engine."""

from __future__ import annotations

import enum
import time
from typing import Optional, Union

import torch

from batchllm.outputs import RequestMetrics
from batchllm.sampling_params import SamplingParams


class RequestStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


class Request:
    def __init__(
        self,
        request_id: str,
        prompt: Optional[str],
        prompt_token_ids: list[int],
        params: SamplingParams,
        max_output_tokens: int,
        arrival_index: int,
    ) -> None:
        self.request_id = request_id
        self.prompt = prompt
        self.prompt_token_ids = list(prompt_token_ids)
        self.params = params
        # max_tokens capped so that prompt + output never exceed max_model_len.
        self.max_output_tokens = max_output_tokens
        self.arrival_index = arrival_index
        self.token_ids: list[int] = list(prompt_token_ids)  # prompt + generated, the tokens whose KV we compute
        self.output_logprobs: list[float] = []
        self.status = RequestStatus.WAITING
        self.num_computed_tokens = 0
        self.block_ids: list[int] = []
        self.finish_reason: Optional[str] = None
        self.stop_reason: Union[int, str, None] = None
        self.output_text: Optional[str] = None  # set at finish (or when a stop string is found)
        self.metrics = RequestMetrics(arrival_time=time.monotonic())
        # Created by the sampler on the logits' device at the first draw (seeded requests only).
        self.generator: Optional[torch.Generator] = None

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens :]

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def is_finished(self) -> bool:
        return self.status == RequestStatus.FINISHED

    def __repr__(self) -> str:
        return f"Request({self.request_id}, {self.status.value}, computed={self.num_computed_tokens}/{self.num_tokens})"
