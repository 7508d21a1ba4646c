"""The engine's side of structured outputs: a matcher per constrained request, advanced with each token the
engine receives, and the bitmask rows of each step filled from them."""

from __future__ import annotations

from typing import Any, Optional

import torch

from batchllm.core.request import Request
from batchllm.sampling_params import SamplingParams
from batchllm.structured.bitmasks import BitmaskFiller, PendingBitmask, StepBitmask
from batchllm.structured.grammars import GrammarCompiler, StructuredOutputError


class StructuredOutputs:
    """Created on the first constrained request (xgrammar's tokenizer tables take a moment to build)."""

    def __init__(self, tokenizer: Any, vocab_size: int) -> None:
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self._compiler: Optional[GrammarCompiler] = None
        self._filler: Optional[BitmaskFiller] = None

    @property
    def compiler(self) -> GrammarCompiler:
        if self._compiler is None:
            if self.tokenizer is None:
                raise StructuredOutputError("structured outputs need the model's tokenizer (it was skipped: "
                                            "skip_tokenizer_init)")
            self._compiler = GrammarCompiler(self.tokenizer, self.vocab_size)
            self._filler = BitmaskFiller(self.vocab_size)
        return self._compiler

    def problem(self, params: SamplingParams) -> Optional[str]:
        """Why this request's constraint cannot be enforced (None when it can, or it has none)."""
        spec = params.structured_outputs
        if spec is None:
            return None
        try:
            return self.compiler.problem(spec)
        except (StructuredOutputError, ImportError) as err:
            return str(err)

    def attach(self, request: Request) -> None:
        """Give a constrained request its matcher (its constraint compiles once per distinct constraint)."""
        if request.params.structured_outputs is not None:
            request.grammar = self.compiler.matcher(request.params.structured_outputs)

    def _masked_rows(self, chunks: list) -> tuple[list[int], list[Any]]:
        rows, matchers = [], []
        for row, chunk in enumerate(chunks):
            request = chunk.request
            if request.grammar is not None and not request.is_finished and not request.grammar.is_terminated():
                rows.append(row)
                matchers.append(request.grammar)
        return rows, matchers

    @property
    def filler(self) -> BitmaskFiller:
        self.compiler  # noqa: B018 -- the filler is made with it
        return self._filler

    def step_mask(self, chunks: list, device: torch.device) -> Optional[StepBitmask]:
        """The bitmask of a step's sampled rows (row order of ``chunks``) for the constrained requests that
        go on; None when none does. Needs every earlier token of those requests received."""
        rows, matchers = self._masked_rows(chunks)
        return self.filler.fill(matchers, rows, len(chunks), device) if matchers else None

    def start_step_mask(self, chunks: list, device: torch.device) -> Optional[PendingBitmask]:
        """``step_mask`` filled in a worker thread while the caller goes on; None when no row is masked.
        Until its ``result``, no token may be accepted for these requests."""
        rows, matchers = self._masked_rows(chunks)
        return self.filler.start_fill(matchers, rows, len(chunks), device) if matchers else None

    def accept(self, requests: list[Request], tokens: list[int]) -> list[int]:
        """Advance each request's matcher by its new token: ACCEPTED, COMPLETE (the constraint is
        satisfied: stop) or REJECTED (a bug), per request; in worker threads for many rows."""
        return self.filler.accept([r.grammar for r in requests], tokens)

    @staticmethod
    def rejection(token: int) -> str:
        return f"the structured-output constraint rejected token {token} (a bug: please report)"


def needs_mask(chunks: list) -> bool:
    return any(chunk.request.grammar is not None for chunk in chunks)
