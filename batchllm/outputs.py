"""What `LLM.generate` returns (vLLM-compatible field names)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Union


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: Optional[float]
    logprobs: Optional[list[float]]
    finish_reason: Optional[str]  # "stop" | "length" | "error" (RequestOutput.error says why)
    stop_reason: Union[int, str, None] = None  # the stop token id or stop string that ended it
    # logprobs=k >= 1: per position, the k most likely tokens {token id: logprob}, best first (the log_softmax
    # after penalties and biases, before temperature); `logprobs` holds the chosen tokens' own
    top_logprobs: Optional[list[dict[int, float]]] = None


@dataclass
class RequestMetrics:
    arrival_time: float
    first_scheduled_time: Optional[float] = None
    first_token_time: Optional[float] = None
    finished_time: Optional[float] = None
    num_preemptions: int = 0


@dataclass
class RequestOutput:
    request_id: str
    prompt: Optional[str]
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool
    metrics: RequestMetrics = field(default_factory=lambda: RequestMetrics(0.0))
    # Set when this request alone failed inside the engine (outputs[0].finish_reason == "error"): the
    # message, with the exception's type and text. Its output holds the tokens received before the failure.
    # With n samples: "sample i of n: <message>" for each failed one (joined by "; "); the others are whole.
    error: Optional[str] = None
