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
# seed and priority must fit torch's int64 (torch.iinfo(torch.long)), the range vLLM's OpenAI server accepts.
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
# The most top logprobs a request may ask for per position (vLLM's default max_logprobs, OpenAI's top_logprobs).
MAX_LOGPROBS = 20
# OpenAI's ranges: logit_bias values, presence / frequency penalties.
MAX_LOGIT_BIAS, MAX_PENALTY = 100.0, 2.0
# Samples per prompt (n): each is an engine request of its own; vLLM's OpenAI server has no cap, but a
# bound keeps one line of a batch file from flooding the engine (OpenAI caps chat n at 128 too).
MAX_N = 128


def is_int(value: Any) -> bool:
    """A real int: True/False are ints to Python but never a meaningful count, seed or token id."""
    return isinstance(value, int) and not isinstance(value, bool)


def not_token_ids(values: Any, vocab_size: int) -> list:
    """The entries of ``values`` that are not token ids (ints in [0, vocab_size))."""
    return [t for t in values if not is_int(t) or not 0 <= t < vocab_size]


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class StructuredOutputsParams:
    """A constraint on the output (vLLM's ``StructuredOutputsParams``): exactly one of

    json: a JSON schema (dict or JSON text); json_object: any JSON object (OpenAI ``{"type": "json_object"}``);
    regex: a regular expression; choice: one of these strings; grammar: an EBNF grammar (GBNF dialect).
    Enforced by xgrammar token masks (batchllm/structured/); each distinct constraint is compiled once.
    """

    json: Union[None, dict, str] = None
    json_object: bool = False
    regex: Optional[str] = None
    choice: Optional[Sequence[str]] = None
    grammar: Optional[str] = None

    def kinds(self) -> list[str]:
        return [name for name, value in (("json", self.json), ("json_object", self.json_object or None),
                                          ("regex", self.regex), ("choice", self.choice),
                                          ("grammar", self.grammar)) if value is not None]

    def key(self) -> tuple:
        """Equal for equal constraints (the compile cache's key)."""
        import json as json_module

        schema = self.json if isinstance(self.json, str) or self.json is None else json_module.dumps(self.json, sort_keys=True)
        return (schema, self.json_object, self.regex, None if self.choice is None else tuple(self.choice), self.grammar)

    def validation_errors(self) -> list[str]:
        kinds = self.kinds()
        if len(kinds) != 1:
            return [f"structured_outputs: give exactly one of json, json_object, regex, choice, grammar (got "
                    f"{kinds or 'none'})"]
        if self.json is not None and not isinstance(self.json, (dict, str)):
            return [f"structured_outputs.json: a JSON schema (object or JSON text), got {type(self.json).__name__}"]
        if self.choice is not None and (isinstance(self.choice, str) or not self.choice
                                        or not all(isinstance(c, str) and c for c in self.choice)):
            return [f"structured_outputs.choice: a non-empty list of non-empty strings, got {self.choice!r}"]
        for name in ("regex", "grammar"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                return [f"structured_outputs.{name}: a non-empty string, got {value!r}"]
        return []


@dataclass
class SamplingParams:
    """How to sample one request's output.

    n: samples per prompt (1..MAX_N); the LLM runs them as n engine requests of one prompt (its KV computed
    once, as a prefix group) with n=1 and, when seed is given, seeds seed, seed + 1, ... (vLLM's rule).
    temperature=0 (anything below SAMPLING_EPS) means greedy; temperatures below MIN_SAMPLED_TEMPERATURE
    are sampled at MIN_SAMPLED_TEMPERATURE. top_k=0 or -1 disables top-k; top_p=1 disables top-p.
    stop: strings that end the output (not included in the text). stop_token_ids: extra
    token ids that end it (included in token_ids, like EOS). logprobs=k (0..MAX_LOGPROBS): return the log
    probability of each chosen token and of the k most likely tokens at each position (vLLM's rule).
    Logits processing (vLLM/OpenAI, batchllm/runner/logits_processors.py): logit_bias {token id: bias in
    [-100, 100]} is added to the logits; allowed_token_ids restricts sampling to those ids; bad_words bans
    words that are one token (bare or after a space); then repetition_penalty (> 0; prompt and output
    tokens, as transformers), frequency_penalty and presence_penalty ([-2, 2]; output tokens only, OpenAI's
    formula); min_p ([0, 1]) drops tokens less likely than min_p x the top token's probability.
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
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: Optional[dict[int, float]] = None
    min_p: float = 0.0
    allowed_token_ids: Optional[list[int]] = None
    bad_words: Optional[list[str]] = None
    # bad_words as token ids, set by update_from_tokenizer: (id() of the tokenizer they were made with, the ids);
    # an id, not the tokenizer, so that pickled params (Ray) do not carry a tokenizer along
    _bad_words_ids: Optional[tuple[int, list[int]]] = field(default=None, init=False, repr=False, compare=False)
    skip_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    priority: int = 0
    decode_length_hint: Optional[int] = None
    structured_outputs: Optional[StructuredOutputsParams] = None
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

    @property
    def bad_words_token_ids(self) -> Optional[list[int]]:
        """The token ids bad_words ban (None until update_from_tokenizer has run)."""
        return None if self._bad_words_ids is None else self._bad_words_ids[1]

    def update_from_tokenizer(self, tokenizer: Any) -> list[str]:
        """Turn bad_words into the token ids they ban (as vLLM: each word bare and after a space); the
        problems, as validation_errors does. Only one-token words are supported."""
        if not self.bad_words or (self._bad_words_ids is not None and self._bad_words_ids[0] == id(tokenizer)):
            return []
        if tokenizer is None:
            return ["bad_words: need the tokenizer (skipped by skip_tokenizer_init); ban token ids with "
                    "logit_bias {id: -100} instead"]
        ids: list[int] = []
        for word in self.bad_words:
            for text in (word.lstrip(), " " + word.lstrip()):
                tokens = tokenizer.encode(text, add_special_tokens=False)
                if text == word.lstrip() and len(tokens) != 1:
                    return [f"bad_words: {word!r} is {len(tokens)} tokens {tokens}; only one-token words are "
                            "supported (ban its first token with logit_bias {id: -100}, or drop it)"]
                if len(tokens) == 1 and tokens[0] not in ids:
                    ids.append(tokens[0])  # the word after a space is banned too when it is one token
        self._bad_words_ids = (id(tokenizer), ids)
        return []

    def output_budget(self, num_prompt_tokens: int, max_model_len: int) -> int:
        """Output tokens this request may generate: max_tokens, capped by the room max_model_len leaves."""
        room = max_model_len - num_prompt_tokens
        return room if self.max_tokens is None else min(self.max_tokens, room)

    def validation_errors(self, vocab_size: int) -> list[str]:
        """Every problem with these values, as '<field>: <why>' messages (empty when valid)."""
        errors = []
        if not is_int(self.n) or not 1 <= self.n <= MAX_N:
            errors.append(f"n: {self.n!r} must be an int in [1, {MAX_N}] (samples per prompt)")
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
        if self.logprobs is not None and (not is_int(self.logprobs) or not 0 <= self.logprobs <= MAX_LOGPROBS):
            errors.append(f"logprobs: {self.logprobs!r} must be None or an int in [0, {MAX_LOGPROBS}] (the number "
                          "of most likely tokens returned beside the chosen one)")
        errors += self._logits_processing_errors(vocab_size)
        if not all(isinstance(s, str) and s for s in self._stop_strings):
            errors.append(f"stop: {self.stop!r} must be non-empty strings")
        bad = not_token_ids(self.stop_token_ids, vocab_size)
        if bad:
            errors.append(f"stop_token_ids: {bad} are not token ids (ints in the vocabulary [0, {vocab_size}))")
        if not is_int(self.priority) or not INT64_MIN <= self.priority <= INT64_MAX:
            errors.append(f"priority: {self.priority!r} must be an int in [-2**63, 2**63 - 1]")
        if self.structured_outputs is not None:
            if not isinstance(self.structured_outputs, StructuredOutputsParams):
                errors.append(f"structured_outputs: a StructuredOutputsParams, got {type(self.structured_outputs).__name__}")
            else:
                errors += self.structured_outputs.validation_errors()
        hint = self.decode_length_hint
        if hint is not None and (not is_int(hint) or hint < 1):
            errors.append(f"decode_length_hint: {self.decode_length_hint!r} must be an int >= 1")
        return errors

    def _logits_processing_errors(self, vocab_size: int) -> list[str]:
        """Problems with the penalties, biases, min_p, allowed_token_ids and bad_words."""
        errors = []
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            if not is_number(value) or not -MAX_PENALTY <= value <= MAX_PENALTY:  # NaN fails too
                errors.append(f"{name}: {value!r} must be a number in [-2, 2] (0 disables it)")
        rep = self.repetition_penalty
        if not is_number(rep) or not 0 < rep < math.inf:
            errors.append(f"repetition_penalty: {rep!r} must be a finite number > 0 (1 disables it; > 1 "
                          "discourages repeating prompt and output tokens)")
        if not is_number(self.min_p) or not 0.0 <= self.min_p <= 1.0:
            errors.append(f"min_p: {self.min_p!r} must be a number in [0, 1] (0 disables it)")
        bias = self.logit_bias
        if bias is not None:
            if not isinstance(bias, dict):
                errors.append(f"logit_bias: {type(bias).__name__} must be a dict {{token id: bias}}")
            else:
                keys = not_token_ids(bias, vocab_size)
                if keys:
                    errors.append(f"logit_bias: keys {keys[:5]} are not token ids (ints in the vocabulary "
                                  f"[0, {vocab_size}))")
                values = [v for v in bias.values() if not is_number(v) or not -MAX_LOGIT_BIAS <= v <= MAX_LOGIT_BIAS]
                if values:
                    errors.append(f"logit_bias: values {values[:5]} must be numbers in [-100, 100]")
        allowed = self.allowed_token_ids
        if allowed is not None:
            if isinstance(allowed, (str, bytes)) or not isinstance(allowed, Sequence) or not allowed:
                errors.append(f"allowed_token_ids: {allowed!r} must be a non-empty list of token ids (or None)")
            else:
                bad = not_token_ids(allowed, vocab_size)
                if bad:
                    errors.append(f"allowed_token_ids: {bad[:5]} are not token ids (ints in the vocabulary "
                                  f"[0, {vocab_size}))")
        words = self.bad_words
        if words is not None and (isinstance(words, str) or not isinstance(words, Sequence)
                                  or not all(isinstance(w, str) and w.strip() for w in words)):
            errors.append(f"bad_words: {words!r} must be a list of non-empty strings (or None)")
        return errors
