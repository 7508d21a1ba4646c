"""Per-request sampling parameters (vLLM-compatible names)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence, Union


@dataclass
class SamplingParams:
    """How to sample one request's output.

    temperature=0 means greedy. top_k=0 or -1 disables top-k; top_p=1 disables top-p.
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
        return self.temperature == 0.0

    def output_budget(self, num_prompt_tokens: int, max_model_len: int) -> int:
        """Output tokens this request may generate: max_tokens, capped by the room max_model_len leaves."""
        room = max_model_len - num_prompt_tokens
        return room if self.max_tokens is None else min(self.max_tokens, room)

    def validation_errors(self, vocab_size: int) -> list[str]:
        """Every problem with these values, as '<field>: <why>' messages (empty when valid)."""
        errors = []
        if self.n != 1:
            errors.append(f"n: {self.n} is not supported; only n=1")
        if not isinstance(self.temperature, (int, float)) or self.temperature < 0:
            errors.append(f"temperature: {self.temperature!r} must be a number >= 0")
        if not isinstance(self.top_p, (int, float)) or not 0.0 < self.top_p <= 1.0:
            errors.append(f"top_p: {self.top_p!r} must be in (0, 1]")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            errors.append(f"top_k: {self.top_k!r} must be an int >= 0 (0 or -1 disables it)")
        if self.max_tokens is not None and (not isinstance(self.max_tokens, int) or self.max_tokens < 1):
            errors.append(f"max_tokens: {self.max_tokens!r} must be an int >= 1 (or None: up to max_model_len)")
        if not isinstance(self.min_tokens, int) or self.min_tokens < 0:
            errors.append(f"min_tokens: {self.min_tokens!r} must be an int >= 0")
        elif self.max_tokens is not None and isinstance(self.max_tokens, int) and self.min_tokens > self.max_tokens:
            errors.append(f"min_tokens: {self.min_tokens} exceeds max_tokens={self.max_tokens}")
        if self.seed is not None and not isinstance(self.seed, int):
            errors.append(f"seed: {self.seed!r} must be an int")
        if self.logprobs is not None and self.logprobs not in (0, 1):
            errors.append(f"logprobs: {self.logprobs!r} is not supported; use None, 0 or 1 (the chosen token)")
        if not all(isinstance(s, str) and s for s in self._stop_strings):
            errors.append(f"stop: {self.stop!r} must be non-empty strings")
        bad = [t for t in self.stop_token_ids if not isinstance(t, int) or not 0 <= t < vocab_size]
        if bad:
            errors.append(f"stop_token_ids: {bad} are outside the vocabulary [0, {vocab_size})")
        if not isinstance(self.priority, int):
            errors.append(f"priority: {self.priority!r} must be an int")
        if self.decode_length_hint is not None and (
            not isinstance(self.decode_length_hint, int) or self.decode_length_hint < 1
        ):
            errors.append(f"decode_length_hint: {self.decode_length_hint!r} must be an int >= 1")
        return errors
