"""Per-request sampling parameters (vLLM-compatible names)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence, Union

# Temperatures below this are greedy (vLLM's _SAMPLING_EPS): dividing logits by them overflows.
SAMPLING_EPS = 1e-5
# Temperatures in [SAMPLING_EPS, MIN_SAMPLED_TEMPERATURE) are sampled at MIN_SAMPLED_TEMPERATURE (vLLM's
# _MAX_TEMP): logits / 1e-5 can reach inf in half precision, and the softmax of inf - inf is NaN.
MIN_SAMPLED_TEMPERATURE = 1e-2
# seed and priority must fit torch's int64 (torch.iinfo(torch.long)), the range vLLM's OpenAI server accepts;
# torch.Generator.manual_seed raises outside it, which would happen mid-batch.
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def is_int(value: Any) -> bool:
    """A real int: True/False are ints to Python but never a meaningful count, seed or token id."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass
class SamplingParams:
    """How to sample one request's output.

    temperature=0 (anything below SAMPLING_EPS) means greedy; temperatures below MIN_SAMPLED_TEMPERATURE
    are sampled at MIN_SAMPLED_TEMPERATURE. top_k=0 or -1 disables top-k; top_p=1 disables top-p.
    stop: strings that end the output (not included in the text). stop_token_ids: extra
    token ids that end it (included in token_ids, like EOS). logprobs: return the log
    probability of each chosen token when set (only 0/1 supported: the chosen token).
    """

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: Optional[int] = None
    max_tokens: Optional[int] = 16
    min_tokens: int = 0
    stop: Union[None, str, Sequence[str]] = None
    stop_token_ids: Optional[Sequence[int]] = None
    ignore_eos: bool = False
    logprobs: Optional[int] = None
    skip_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    priority: int = 0
    decode_length_hint: Optional[int] = None
    _stop_strings: tuple[str, ...] = field(default=(), init=False, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self._stop_strings = (self.stop,)
        elif self.stop is None:
            self._stop_strings = ()
        else:
            self._stop_strings = tuple(self.stop)
        self.stop_token_ids = list(self.stop_token_ids or [])
        if self.top_k == -1:
            self.top_k = 0

    @property
    def stop_strings(self) -> tuple[str, ...]:
        return self._stop_strings

    @property
    def greedy(self) -> bool:
        return self.temperature < SAMPLING_EPS

    def output_budget(self, num_prompt_tokens: int, max_model_len: int) -> int:
        """Output tokens this request may generate: max_tokens, capped by the room max_model_len leaves."""
        room = max_model_len - num_prompt_tokens
        return room if self.max_tokens is None else min(self.max_tokens, room)

    def validation_errors(self, vocab_size: int) -> list[str]:
        """Every problem with these values, as '<field>: <why>' messages (empty when valid)."""
        errors = []
        if not is_int(self.n) or self.n != 1:
            errors.append(f"n: {self.n} is not supported; only n=1")
        if not is_number(self.temperature) or not math.isfinite(self.temperature) or self.temperature < 0:
            errors.append(f"temperature: {self.temperature!r} must be a finite number >= 0 (0 is greedy)")
        # `not 0 < nan <= 1` holds, so NaN is rejected here too.
        if not is_number(self.top_p) or not 0.0 < self.top_p <= 1.0:
            errors.append(f"top_p: {self.top_p!r} must be a number in (0, 1]")
        # Counts beyond int64 cannot go into the sampler's and scheduler's tensors (they would raise mid-batch).
        if not is_int(self.top_k) or not 0 <= self.top_k <= INT64_MAX:
            errors.append(f"top_k: {self.top_k!r} must be an int in [0, 2**63 - 1] (0 or -1 disables it)")
        if self.max_tokens is not None and (not is_int(self.max_tokens) or not 1 <= self.max_tokens <= INT64_MAX):
            errors.append(f"max_tokens: {self.max_tokens!r} must be an int in [1, 2**63 - 1] (or None: up to "
                          "max_model_len)")
        if not is_int(self.min_tokens) or not 0 <= self.min_tokens <= INT64_MAX:
            errors.append(f"min_tokens: {self.min_tokens!r} must be an int in [0, 2**63 - 1]")
        elif self.max_tokens is not None and is_int(self.max_tokens) and self.min_tokens > self.max_tokens:
            errors.append(f"min_tokens: {self.min_tokens} exceeds max_tokens={self.max_tokens}")
        if self.seed is not None and (not is_int(self.seed) or not INT64_MIN <= self.seed <= INT64_MAX):
            errors.append(f"seed: {self.seed!r} must be an int in [-2**63, 2**63 - 1] (or None)")
        if self.logprobs is not None and self.logprobs not in (0, 1):
            errors.append(f"logprobs: {self.logprobs!r} is not supported; use None, 0 or 1 (the chosen token)")
        if not all(isinstance(s, str) and s for s in self._stop_strings):
            errors.append(f"stop: {self.stop!r} must be non-empty strings")
        bad = [t for t in self.stop_token_ids if not is_int(t) or not 0 <= t < vocab_size]
        if bad:
            errors.append(f"stop_token_ids: {bad} are not token ids (ints in the vocabulary [0, {vocab_size}))")
        if not is_int(self.priority) or not INT64_MIN <= self.priority <= INT64_MAX:
            errors.append(f"priority: {self.priority!r} must be an int in [-2**63, 2**63 - 1]")
        hint = self.decode_length_hint
        if hint is not None and (not is_int(hint) or hint < 1):
            errors.append(f"decode_length_hint: {self.decode_length_hint!r} must be an int >= 1")
        return errors
