"""OpenAI Batch API lines <-> engine requests: body -> SamplingParams / prompt, RequestOutput -> output line.

Input (one JSON object a line, read by requests_jsonl.py):
  {"custom_id": "q1", "method": "POST", "url": "/v1/chat/completions", "body": {"messages": [...], ...}}
  {"custom_id": "q2", "method": "POST", "url": "/v1/completions", "body": {"prompt": "text" | [ids], ...}}
  plain lines: {"prompt": ...} / {"prompt_token_ids": [...]} (completions) or {"messages": [...]} (chat),
  with the same parameters at the top level.

Output (one line per request, in completion order):
  success: {"id": "batch_req_...", "custom_id": ..., "response": {"status_code": 200, "request_id": ...,
            "body": <chat.completion | text_completion>}, "error": null}
  failure: {"id": ..., "custom_id": ..., "response": {"status_code": 400, "request_id": ...,
            "body": {"error": {"message", "type", "param", "code"}}}, "error": {"code", "message"}}
OpenAI writes failed requests to a separate error file; we keep one file (so resume has one place to look) and
give a failure both the HTTP-like response OpenAI would put there and a top-level ``error`` to filter on.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

from batchllm.batch.request_errors import RequestError, short_repr
from batchllm.batch.structured_fields import STRUCTURED_FIELDS, structured_outputs_from_body
from batchllm.batch.chat_bodies import CHAT_FIELDS, chat_options_from_body
from batchllm.chat import ChatInputError, ChatOptions
from batchllm.chat import normalize_messages as normalize_chat_messages
from batchllm.batch.openai_sampling import PROCESSING_FIELDS, logprobs_block, processing_kwargs
from batchllm.sampling_params import SamplingParams, is_int, is_number

CHAT_URL = "/v1/chat/completions"
COMPLETIONS_URL = "/v1/completions"
SUPPORTED_URLS = (CHAT_URL, COMPLETIONS_URL)

# Body fields read but not used (echoed or bookkeeping only).
IGNORED_FIELDS = frozenset({"model", "user", "metadata", "store", "service_tier", "stream_options", "method", "url"})
# Fields accepted only at their OpenAI default value (anything else is an "unsupported_parameter" error line).
DEFAULT_ONLY = {
    "stream": (None, False),
    "echo": (None, False),
    "best_of": (None, 1),
    "suffix": (None, ""),
    "tools": (None, []),
    "tool_choice": (None, "none", "auto"),
    "functions": (None, []),
    "function_call": (None, "none", "auto"),
    "parallel_tool_calls": (None, True, False),
}
SAMPLING_FIELDS = frozenset({
    "max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k", "seed", "stop", "stop_token_ids",
    "min_tokens", "ignore_eos", "n", "logprobs", "skip_special_tokens", "include_stop_str_in_output",
}) | PROCESSING_FIELDS  # penalties, biases, min_p, allowed_token_ids, top_logprobs: batch/openai_sampling.py
OPENAI_DEFAULT_TEMPERATURE = 1.0


@dataclass
class BatchRequest:
    """One runnable request: what to tokenize and how to sample. ``kind`` is "chat" or "completion"."""

    custom_id: str
    kind: str
    params: SamplingParams
    model: Optional[str] = None
    text: Optional[str] = None  # completion text prompt
    token_ids: Optional[Sequence[int]] = None  # completion token-id prompt
    messages: Optional[list[dict]] = None  # chat conversation (content parts normalised to strings)
    seed_derived: bool = False  # the seed was derived from the job seed and the custom_id
    chat: Optional[ChatOptions] = None  # how a chat conversation becomes its prompt (chat requests only)


MAX_MESSAGE_CHARS = 2000  # an error message quoting a huge value or exception is cut to this


_short = short_repr


def internal_error(step: str, err: BaseException) -> RequestError:
    """The error line of a request whose ``step`` failed in a way no check foresaw (a bug, or a tokenizer's)."""
    return RequestError("internal_error", f"{step} failed: {type(err).__name__}: {err}", None, 500)


def derived_seed(job_seed: int, custom_id: str) -> int:
    """A per-request seed from the job seed and the custom_id: sampled results survive reruns and resumes."""
    digest = hashlib.blake2b(f"{job_seed}\0{custom_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def request_kind(url: Optional[str], has_messages: bool) -> str:
    if url is None:
        return "chat" if has_messages else "completion"
    if url not in SUPPORTED_URLS:
        raise RequestError("unsupported_url", f"url {url!r} is not supported; use {CHAT_URL} or {COMPLETIONS_URL}",
                           "url", 404)
    kind = "chat" if url == CHAT_URL else "completion"
    if kind == "chat" and not has_messages:
        raise RequestError("invalid_request", f"{CHAT_URL} needs 'messages' in the body", "messages")
    if kind == "completion" and has_messages:
        raise RequestError("invalid_request", f"{COMPLETIONS_URL} takes 'prompt', not 'messages'", "messages")
    return kind


def sampling_params_from_body(
    body: dict, kind: str, vocab_size: int, default_max_tokens: Optional[int] = None
) -> SamplingParams:
    """Map OpenAI body fields to SamplingParams; RequestError for unknown fields or values we cannot honour."""
    for key, value in body.items():
        if key in SAMPLING_FIELDS or key in IGNORED_FIELDS or key in STRUCTURED_FIELDS or key in CHAT_FIELDS:
            continue
        if key in DEFAULT_ONLY:
            if not any(value == ok and type(value) is type(ok) or (value is ok) for ok in DEFAULT_ONLY[key]):
                raise RequestError("unsupported_parameter", f"{key}={_short(value)} is not supported", key)
            continue
        raise RequestError("unsupported_parameter", f"unknown parameter {key!r}", key)
    max_tokens = body.get("max_tokens")
    mct = body.get("max_completion_tokens")
    if max_tokens is not None and mct is not None and max_tokens != mct:
        raise RequestError("invalid_parameter", "max_tokens and max_completion_tokens differ; give one", "max_tokens")
    if max_tokens is None:
        max_tokens = mct
    if max_tokens is None:
        max_tokens = default_max_tokens
    for key, value in (("max_tokens", max_tokens), ("top_k", body.get("top_k")), ("seed", body.get("seed")),
                       ("min_tokens", body.get("min_tokens")), ("n", body.get("n"))):
        if value is not None and not is_int(value):
            raise RequestError("invalid_parameter", f"{key}={_short(value)} must be an integer", key)
    for key in ("temperature", "top_p"):
        value = body.get(key)
        if value is not None and not is_number(value):
            raise RequestError("invalid_parameter", f"{key}={_short(value)} must be a number", key)
    stop = body.get("stop")
    if stop is not None and not isinstance(stop, str) and not (
        isinstance(stop, list) and all(isinstance(s, str) for s in stop)
    ):
        raise RequestError("invalid_parameter", f"stop={_short(stop)} must be a string or a list of strings", "stop")
    stop_ids = body.get("stop_token_ids")
    if stop_ids is not None and not (isinstance(stop_ids, list) and all(is_int(t) for t in stop_ids)):
        raise RequestError("invalid_parameter", f"stop_token_ids={_short(stop_ids)} must be a list of integers",
                           "stop_token_ids")
    for key in ("ignore_eos", "skip_special_tokens", "include_stop_str_in_output"):
        if body.get(key) is not None and not isinstance(body[key], bool):
            raise RequestError("invalid_parameter", f"{key}={_short(body[key])} must be true or false", key)
    processing = processing_kwargs(body, kind)  # logprobs, penalties, biases, min_p, allowed_token_ids
    logprobs = processing.pop("logprobs")
    kwargs: dict[str, Any] = dict(
        n=body.get("n") if body.get("n") is not None else 1,
        temperature=body["temperature"] if body.get("temperature") is not None else OPENAI_DEFAULT_TEMPERATURE,
        top_p=body["top_p"] if body.get("top_p") is not None else 1.0,
        top_k=body["top_k"] if body.get("top_k") is not None else 0,
        seed=body.get("seed"),
        max_tokens=max_tokens,
        min_tokens=body.get("min_tokens") or 0,
        stop=stop if stop else None,
        stop_token_ids=stop_ids,
        ignore_eos=bool(body.get("ignore_eos", False)),
        logprobs=logprobs,
        **processing,
    )
    for key in ("skip_special_tokens", "include_stop_str_in_output"):
        if body.get(key) is not None:
            kwargs[key] = body[key]
    kwargs["structured_outputs"] = structured_outputs_from_body(body)
    params = SamplingParams(**kwargs)
    errors = params.validation_errors(vocab_size)
    if errors:
        field = errors[0].split(":", 1)[0]
        raise RequestError("invalid_parameter", "; ".join(errors), field)
    return params


def normalize_messages(messages: Sequence[dict]) -> list[dict]:
    """Copy the conversation with list-of-parts contents joined into strings (``batchllm.chat``: text parts
    joined with "\\n", as vLLM; other part types are an ``invalid_request`` naming the message and part)."""
    try:
        return normalize_chat_messages(messages)
    except ChatInputError as err:
        raise RequestError(err.code, str(err), err.param) from None


def batch_request_from_record(
    record, custom_id: str, vocab_size: int, job_seed: int, default_max_tokens: Optional[int] = None
) -> BatchRequest:
    """A RequestRecord (requests_jsonl.py) -> BatchRequest, or RequestError."""
    if record.url is not None and record.url not in SUPPORTED_URLS:
        request_kind(record.url, False)  # the url is the first thing wrong with such a line, whatever else is
    if not record.ok:
        raise RequestError("invalid_request", f"line {record.line_number}: {record.error}")
    kind = request_kind(record.url, record.messages is not None)
    params = sampling_params_from_body(record.params, kind, vocab_size, default_max_tokens)
    derived = False
    if params.seed is None and params.temperature > 0:
        params.seed = derived_seed(job_seed, custom_id)
        derived = True
    model = record.params.get("model") if isinstance(record.params.get("model"), str) else None
    messages = normalize_messages(record.messages) if record.messages is not None else None
    try:
        chat = chat_options_from_body(record.params, kind, messages)
    except ChatInputError as err:
        raise RequestError(err.code, str(err), err.param) from None
    return BatchRequest(custom_id, kind, params, model, record.prompt, record.prompt_token_ids, messages, derived,
                        chat)


# ----------------------------------------------------------------------------------------------------- output


def _new_id(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex}"


def success_line(custom_id: str, kind: str, model: str, output,
                 token_texts: Optional[Sequence[Optional[list[str]]]] = None, created: Optional[int] = None,
                 token_text: Optional[Callable[[int], str]] = None) -> dict:
    """The output line of a finished request (``output`` is a RequestOutput): one choice per completion
    (``n`` samples: ``choices[0..n-1]``); usage counts the prompt once and the completion tokens of every
    choice, as OpenAI does. token_texts: per completion, the text of each token (for logprobs; None: ids);
    token_text: the text of a token id, for the top_logprobs alternatives (None: ids)."""
    created = int(time.time()) if created is None else created
    prompt_tokens = len(output.prompt_token_ids)
    completion_tokens = sum(len(c.token_ids) for c in output.outputs)
    texts = list(token_texts) if token_texts is not None else [None] * len(output.outputs)
    choices = [_choice(kind, completion, tokens, token_text) for completion, tokens in zip(output.outputs, texts)]
    if kind == "chat":
        body_id, obj = _new_id("chatcmpl-"), "chat.completion"
    else:
        body_id, obj = _new_id("cmpl-"), "text_completion"
    body = {
        "id": body_id,
        "object": obj,
        "created": created,
        "model": model,
        "choices": choices,
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
    }
    return {"id": _new_id("batch_req_"), "custom_id": custom_id,
            "response": {"status_code": 200, "request_id": uuid.uuid4().hex, "body": body}, "error": None}


def _choice(kind: str, completion, token_texts: Optional[list[str]],
            token_text: Optional[Callable[[int], str]] = None) -> dict:
    """One element of ``choices``: its index, the text (or assistant message), logprobs and finish_reason."""
    logprobs = logprobs_block(kind, completion, token_texts, token_text)  # batch/openai_sampling.py
    choice: dict[str, Any] = {"index": completion.index}
    if kind == "chat":
        choice["message"] = {"role": "assistant", "content": completion.text}
    else:
        choice["text"] = completion.text
    choice["logprobs"] = logprobs
    choice["finish_reason"] = completion.finish_reason
    return choice


def error_line(custom_id: str, error: RequestError) -> dict:
    """The output line of a request that could not run."""
    err_type = "invalid_request_error" if error.status_code < 500 else "server_error"
    message = error.message if len(error.message) <= MAX_MESSAGE_CHARS else error.message[:MAX_MESSAGE_CHARS] + "..."
    return {
        "id": _new_id("batch_req_"),
        "custom_id": custom_id,
        "response": {"status_code": error.status_code, "request_id": uuid.uuid4().hex,
                     "body": {"error": {"message": message, "type": err_type, "param": error.param,
                                        "code": error.code}}},
        "error": {"code": error.code, "message": message},
    }
