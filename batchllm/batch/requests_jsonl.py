"""Streaming reader of request JSONL files, one request a line; a bad line is reported, never fatal.

Accepted line shapes:
  {"prompt": "text"}                        plain text (tokenized with the model's tokenizer)
  {"prompt_token_ids": [1, 2, 3]}           token ids
  {"messages": [{"role": ..., "content": ...}, ...]}     chat (the model's chat template is applied)
  OpenAI batch format: {"custom_id": ..., "method": "POST", "url": "/v1/chat/completions" or
  "/v1/completions", "body": {"messages": [...]} or {"prompt": "text" | [ids] | ["one text"], ...}}
Any other fields (of the line, or of "body") are kept in ``params`` (max_tokens, temperature, ...), for the
commands that run the requests.
"""

from __future__ import annotations

import json
import os
from array import array
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Iterator, Optional, Union

import numpy as np

_PROMPT_KEYS = ("prompt", "prompt_token_ids", "messages")


@dataclass(frozen=True)
class RequestRecord:
    """One line of the file. Exactly one of prompt / prompt_token_ids / messages is set unless error is."""

    line_number: int  # 1-based
    custom_id: Optional[str] = None
    prompt: Optional[str] = None
    prompt_token_ids: Optional[array] = None  # array('i'): compact, and copied into token buffers as memory
    messages: Optional[tuple[dict, ...]] = None
    params: dict[str, Any] = field(default_factory=dict)
    url: Optional[str] = None
    error: Optional[str] = None

    @property
    def ok(self) -> bool:
        return self.error is None


def parse_request_line(line: Union[str, bytes], line_number: int) -> Optional[RequestRecord]:
    """Parse one line; None for a blank line, a record with ``error`` set for a malformed one."""
    if isinstance(line, bytes):
        try:
            line = line.decode("utf-8")
        except UnicodeDecodeError as err:
            return RequestRecord(line_number, error=f"not UTF-8: {err}")
    if not line.strip():
        return None
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as err:
        return RequestRecord(line_number, error=f"invalid JSON: {err.msg} (column {err.colno})")
    if not isinstance(obj, dict):
        return RequestRecord(line_number, error=f"expected a JSON object, got {type(obj).__name__}")
    custom_id = obj.get("custom_id")
    if custom_id is not None and not isinstance(custom_id, str):
        custom_id = str(custom_id)
    url = obj.get("url") if isinstance(obj.get("url"), str) else None
    if "body" in obj:
        body = obj["body"]
        if not isinstance(body, dict):
            return RequestRecord(line_number, custom_id, url=url, error="'body' must be a JSON object")
        source = body
        params = {k: v for k, v in body.items() if k not in _PROMPT_KEYS}
    else:
        source = obj
        params = {k: v for k, v in obj.items() if k not in _PROMPT_KEYS and k != "custom_id"}
    try:
        prompt, token_ids, messages = _prompt_fields(source)
    except ValueError as err:
        return RequestRecord(line_number, custom_id, params=params, url=url, error=str(err))
    return RequestRecord(line_number, custom_id, prompt, token_ids, messages, params, url)


def _prompt_fields(source: dict) -> tuple[Optional[str], Optional[array], Optional[tuple[dict, ...]]]:
    present = [k for k in _PROMPT_KEYS if k in source]
    if not present:
        raise ValueError("no 'prompt', 'prompt_token_ids' or 'messages' field")
    if len(present) > 1:
        raise ValueError(f"more than one prompt field: {present}")
    key = present[0]
    value = source[key]
    if key == "messages":
        if not isinstance(value, list) or not value:
            raise ValueError("'messages' must be a non-empty list")
        for m in value:
            if not isinstance(m, dict) or not isinstance(m.get("role"), str) or "content" not in m:
                raise ValueError("each message must be an object with a string 'role' and a 'content'")
        return None, None, tuple(value)
    if key == "prompt":
        if isinstance(value, str):
            return value, None, None
        if isinstance(value, list) and len(value) == 1 and isinstance(value[0], str):
            return value[0], None, None
        if isinstance(value, list) and value and all(isinstance(t, int) and not isinstance(t, bool) for t in value):
            return None, _token_ids(value), None
        raise ValueError("'prompt' must be a string or a list of token ids (one prompt per line)")
    if not isinstance(value, list):
        raise ValueError("'prompt_token_ids' must be a list of integers")
    return None, _token_ids(value), None


def _token_ids(value: list) -> array:
    if not value:
        raise ValueError("the prompt is empty")
    # Validate in C (a Python loop over the ids would dominate reading a big file): array('i') rejects
    # non-integers and values beyond int32; the type set also rejects bools, which array() takes as 0/1.
    try:
        if set(map(type, value)) != {int}:
            raise TypeError
        ids = array("i", value)
    except (TypeError, OverflowError):
        bad = next((t for t in value if type(t) is not int or not 0 <= t < 2**31 - 1), None)
        raise ValueError(f"token ids must be integers in [0, 2**31 - 2], got {bad!r}") from None
    view = np.frombuffer(ids, dtype=np.int32)
    if view.min() < 0 or view.max() > 2**31 - 2:
        bad = int(view.min()) if view.min() < 0 else int(view.max())
        raise ValueError(f"token ids must be integers in [0, 2**31 - 2], got {bad}")
    return ids


def read_request_records(path: Union[str, os.PathLike], progress: bool = False) -> Iterator[RequestRecord]:
    """Yield the records of a JSONL file in order, skipping blank lines. ``progress`` shows a byte progress bar."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        yield from _records(f, size, progress, os.fspath(path))


def _records(f: BinaryIO, size: int, progress: bool, name: str) -> Iterator[RequestRecord]:
    bar = None
    if progress:
        from tqdm import tqdm

        # disable=None: no bar when stderr is not a terminal (logs, pipes).
        bar = tqdm(total=size, unit="B", unit_scale=True, desc=os.path.basename(name), leave=False, disable=None)
    try:
        pending = 0
        for line_number, line in enumerate(f, start=1):
            pending += len(line)
            if bar is not None and pending >= 1 << 20:  # update per MiB: tqdm per line costs more than parsing
                bar.update(pending)
                pending = 0
            record = parse_request_line(line, line_number)
            if record is not None:
                yield record
        if bar is not None:
            bar.update(pending)
    finally:
        if bar is not None:
            bar.close()
