"""Request-body fields of logits processing and logprobs -> SamplingParams keywords, and logprobs -> response.

Body (OpenAI, with vLLM's extensions): ``presence_penalty``, ``frequency_penalty`` (numbers in [-2, 2]),
``logit_bias`` (``{"<token id>": bias}``: JSON object keys are strings, turned into int ids here),
``repetition_penalty``, ``min_p``, ``allowed_token_ids`` (vLLM); ``logprobs``: chat ``true`` (with
``top_logprobs`` k in [0, 20] alternatives per token), completions an int k in [0, 20] (the chosen token's
logprob and k alternatives). Ranges are checked by ``SamplingParams.validation_errors``; this module checks
types and shapes that cannot reach SamplingParams as they are.

Response: chat ``choices[i].logprobs = {"content": [{"token", "logprob", "bytes", "top_logprobs": [{"token",
"logprob", "bytes"}, ...]}, ...]}``; completions ``choices[i].logprobs = {"tokens", "token_logprobs",
"top_logprobs": [{token text: logprob}, ...] (None for k = 0), "text_offset"}``.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from batchllm.batch.request_errors import RequestError as SamplingFieldError
from batchllm.batch.request_errors import short_repr as _short
from batchllm.sampling_params import MAX_LOGPROBS, is_int, is_number

PROCESSING_FIELDS = frozenset({"presence_penalty", "frequency_penalty", "repetition_penalty", "logit_bias",
                               "min_p", "allowed_token_ids", "top_logprobs"})
# JSON has no -inf: a masked token's logprob is written as this (vLLM's OpenAI server does the same).
MIN_JSON_LOGPROB = -9999.0


def processing_kwargs(body: dict, kind: str) -> dict[str, Any]:
    """SamplingParams keywords of these fields (``logprobs`` always; the others when given, not null)."""
    kwargs: dict[str, Any] = {"logprobs": _logprobs(body.get("logprobs"), body.get("top_logprobs"), kind)}
    for key in ("presence_penalty", "frequency_penalty", "repetition_penalty", "min_p"):
        value = body.get(key)
        if value is not None:
            if not is_number(value):
                raise SamplingFieldError("invalid_parameter", f"{key}={_short(value)} must be a number", key)
            kwargs[key] = value
    bias = body.get("logit_bias")
    if bias is not None:
        kwargs["logit_bias"] = _logit_bias(bias)
    allowed = body.get("allowed_token_ids")
    if allowed is not None:
        if not isinstance(allowed, list) or not all(is_int(t) for t in allowed):
            raise SamplingFieldError("invalid_parameter", f"allowed_token_ids={_short(allowed)} must be a list of "
                                     "integer token ids", "allowed_token_ids")
        kwargs["allowed_token_ids"] = allowed
    return kwargs


def _logit_bias(bias: Any) -> dict[int, float]:
    if not isinstance(bias, dict):
        raise SamplingFieldError("invalid_parameter", f"logit_bias={_short(bias)} must be an object "
                                 '{"<token id>": bias}', "logit_bias")
    out: dict[int, float] = {}
    for key, value in bias.items():
        # JSON keys are strings; an int key comes from a Python caller. "+5", " 5", "5.0" are not token ids.
        if is_int(key):
            token = key
        elif isinstance(key, str) and key.isascii() and key.isdigit() and len(key) <= 18:
            token = int(key)
        else:
            raise SamplingFieldError("invalid_parameter", f"logit_bias: key {_short(key)} is not a token id (the "
                                     'keys are token ids as strings, e.g. "50256")', "logit_bias")
        if not is_number(value):
            raise SamplingFieldError("invalid_parameter", f"logit_bias[{_short(key)}]={_short(value)} must be a "
                                     "number in [-100, 100]", "logit_bias")
        out[token] = float(value)
    return out


def _logprobs(value: Any, top: Any, kind: str) -> Optional[int]:
    if top is not None and kind != "chat" and top != 0:
        raise SamplingFieldError("unsupported_parameter", "top_logprobs is a chat field; for completions give "
                                 "logprobs=k", "top_logprobs")
    if top is not None and (not is_int(top) or not 0 <= top <= MAX_LOGPROBS):
        raise SamplingFieldError("invalid_parameter", f"top_logprobs={_short(top)} must be an integer in "
                                 f"[0, {MAX_LOGPROBS}]", "top_logprobs")
    if kind == "chat":
        if value is None or value is False:
            if top:  # OpenAI's rule: alternatives come with the chosen tokens' logprobs
                raise SamplingFieldError("invalid_parameter", f"top_logprobs={top} needs logprobs=true",
                                         "top_logprobs")
            return None
        if value is True:
            return top or 0
        raise SamplingFieldError("invalid_parameter", f"logprobs={_short(value)} must be true or false for chat",
                                 "logprobs")
    if value is None:
        return None
    if not is_int(value):
        raise SamplingFieldError("invalid_parameter", f"logprobs={_short(value)} must be an integer in "
                                 f"[0, {MAX_LOGPROBS}] (the alternatives returned per token)", "logprobs")
    return value


# ---------------------------------------------------------------------------------------------------- output


def logprobs_block(kind: str, completion: Any, token_texts: Optional[list[str]],
                   token_text: Optional[Callable[[int], str]] = None) -> Optional[dict]:
    """``choices[i].logprobs`` of a CompletionOutput (None when it has no logprobs).

    token_texts: the text of each output token (None: their ids as strings); token_text: the text of any
    token id, for the top alternatives (None: the id as a string).
    """
    if completion.logprobs is None:
        return None
    tokens = token_texts if token_texts is not None else [str(t) for t in completion.token_ids]
    text_of = token_text if token_text is not None else str
    top = completion.top_logprobs  # None for k = 0
    if kind == "chat":
        content = []
        for j, (tok, lp) in enumerate(zip(tokens, completion.logprobs)):
            alternatives = []
            for token_id, alt_lp in (top[j].items() if top is not None else ()):
                text = text_of(token_id)
                alternatives.append({"token": text, "logprob": max(alt_lp, MIN_JSON_LOGPROB),
                                     "bytes": list(text.encode("utf-8"))})
            content.append({"token": tok, "logprob": lp, "bytes": list(tok.encode("utf-8")),
                            "top_logprobs": alternatives})
        return {"content": content}
    offsets, pos = [], 0
    for tok in tokens:
        offsets.append(pos)
        pos += len(tok)
    top_lists = None
    if top is not None:
        top_lists = []
        for step in top:
            by_text: dict[str, float] = {}
            for token_id, lp in step.items():  # best first: of two ids with one text, the likelier stays
                by_text.setdefault(text_of(token_id), max(lp, MIN_JSON_LOGPROB))
            top_lists.append(by_text)
    return {"tokens": tokens, "token_logprobs": list(completion.logprobs), "top_logprobs": top_lists,
            "text_offset": offsets}
