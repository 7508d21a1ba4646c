"""What a batch job runs its requests on: one ``LLM`` in this process, or data-parallel replicas.

The job reads, validates, tokenizes and analyses the input, and alone writes the output; an executor only
turns the runnable requests into outputs, in any order. ``LocalExecutor`` is the one-engine case;
``batchllm.distributed.DataParallelExecutor`` spreads the same requests over Ray actors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator, Optional, Protocol

import numpy as np

from batchllm.batch.store import CompactRequests
from batchllm.outputs import RequestOutput

if TYPE_CHECKING:
    from batchllm.batch.summary import BatchSummary
    from batchllm.llm import LLM
    from batchllm.prefix import PrefixAnalysis


@dataclass(frozen=True)
class ModelFacts:
    """What the job needs to know of the model to read and check requests (no weights)."""

    model: str
    tokenizer: Any  # a Hugging Face tokenizer, or None (skip_tokenizer_init)
    vocab_size: int
    max_model_len: int
    block_size: int
    structured: Any = None  # the engine's StructuredOutputs when the engine runs in this process

    @classmethod
    def load(cls, model: str, tokenizer: Optional[str] = None, max_model_len: Optional[int] = None,
             skip_tokenizer_init: bool = False, block_size: int = 16) -> "ModelFacts":
        """The facts an ``LLM(model, ...)`` would have, from the config and tokenizer alone."""
        from batchllm.config import resolve_max_model_len
        from batchllm.model.arch_config import load_arch_config
        from batchllm.model.tokenizer import load_tokenizer

        arch = load_arch_config(model)
        return cls(model, None if skip_tokenizer_init else load_tokenizer(tokenizer or model), arch.vocab_size,
                   resolve_max_model_len(arch.max_position_embeddings, arch.sliding_window, max_model_len),
                   block_size)


class RequestExecutor(Protocol):
    facts: ModelFacts

    def kv_blocks(self) -> Optional[int]:
        """KV blocks of one engine's cache (the LRU comparison of the summary), when known."""
        ...

    def execute(self, requests: CompactRequests, analysis: Optional["PrefixAnalysis"]) -> Iterator[tuple[int, RequestOutput]]:
        """Run every request; yield (request index, output) as each finishes, in any order."""
        ...

    def report(self, summary: "BatchSummary") -> None:
        """Add what this executor alone knows (replicas, units) to the summary, after ``execute``."""
        ...


class LocalExecutor:
    """One ``LLM`` in this process; ``max_requests_per_pass`` bounds the requests it holds at once."""

    def __init__(self, llm: "LLM", max_requests_per_pass: int = 0) -> None:
        self.llm = llm
        self.max_requests_per_pass = max_requests_per_pass
        config = llm.config
        self.facts = ModelFacts(config.model, llm.get_tokenizer(), llm.vocab_size, config.max_model_len,
                                config.cache.block_size, llm.engine.structured)

    def kv_blocks(self) -> Optional[int]:
        return self.llm.num_kv_blocks

    def execute(self, requests: CompactRequests, analysis: Optional["PrefixAnalysis"]) -> Iterator[tuple[int, RequestOutput]]:
        offsets = requests.offsets
        for window in passes(requests, analysis, self.max_requests_per_pass):
            chunk = requests.select(window, offsets)
            for j, output in self.llm.run_encoded(chunk.encoded(), chunk.params_list()):
                yield int(window[j]), output
            del chunk

    def report(self, summary: "BatchSummary") -> None:
        return None


def passes(requests: CompactRequests, analysis: Optional["PrefixAnalysis"], limit: int) -> list[np.ndarray]:
    """Request indices of each pass: all at once, or ``limit`` at a time with prefix groups kept together."""
    n = len(requests)
    if n == 0:
        return []
    if limit <= 0 or limit >= n or analysis is None:
        return [np.arange(n)]
    # Members of a prefix group next to each other, so a group is split over passes at most once.
    order = np.argsort(np.asarray(analysis.request_group), kind="stable")
    return [order[i: i + limit] for i in range(0, n, limit)]
