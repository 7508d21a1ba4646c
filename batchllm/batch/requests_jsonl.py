"""Streaming reader of request JSONL files, one request a line; a bad line is reported, never fatal.

Accepted line shapes:
  {"prompt": "text"}                        plain text (tokenized with the model's tokenizer)
  {"prompt_token_ids": [1, 2, 3]}           token ids
  {"messages": [{"role": ..., "content": ...}, ...]}     chat (the model's chat template is applied)
  OpenAI batch format: {"custom_id": ..., "method": "POST", "url": "/v1/chat/completions" or
  "/v1/completions", "body": {"messages": [...]} or {"prompt": "text" | [ids] | ["one text"], ...}}
Any other fields (of the line, or of "body") are kept in ``params`` (max_tokens, temperature, ...), for the
commands that run the requests.

No line can stop the reader: bytes that are not UTF-8, JSON that is malformed, nested too deep or holds an
integer too long for Python, and strings holding a lone surrogate (``"\\ud800"``, not Unicode) each become a
record with ``error`` set. A UTF-8 byte-order mark at the start of the file is skipped. Every record carries
``line_hash``, a digest of the line's bytes: the batch job names lines without a ``custom_id`` by it and
notices, on resume, lines edited since the results were written.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from array import array
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Iterator, Optional, Union

import numpy as np

_PROMPT_KEYS = ("prompt", "prompt_token_ids", "messages")
_BOM = b"\xef\xbb\xbf"
# A JSON escape of a UTF-16 surrogate: the only way a line of valid UTF-8 can hold a lone one.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
AUTO_ID_PREFIX = "auto-"
_AUTO_ID = re.compile(r"auto-[0-9a-f]{16}-[0-9]+")


def line_hash(line: bytes) -> int:
    """64-bit digest of a line's bytes, line ending and surrounding whitespace excluded."""
    return int.from_bytes(hashlib.blake2b(line.strip(), digest_size=8).digest(), "little")


def auto_custom_id(digest: int, occurrence: int) -> str:
    """The custom_id of a line that has none: its content digest, and which identical copy it is (1, 2, ...).

    It stays the same when other lines are added, removed or reordered, unlike a line number.
    """
    return f"{AUTO_ID_PREFIX}{digest:016x}-{occurrence}"


def is_auto_custom_id(custom_id: str) -> bool:
    """Whether a string has the form of auto_custom_id (reserved: a real custom_id of this form is refused)."""
    return _AUTO_ID.fullmatch(custom_id) is not None


@dataclass(frozen=True)
class RequestRecord:
    """One line of the file. Exactly one of prompt / prompt_token_ids / messages is set unless error is."""

    line_number: int  # 1-based
    custom_id: Optional[str] = None  # None: the line has none (or one that is not a string or integer)
    prompt: Optional[str] = None
    prompt_token_ids: Optional[array] = None  # array('i'): compact, and copied into token buffers as memory
    messages: Optional[tuple[dict, ...]] = None
    params: dict[str, Any] = field(default_factory=dict)
    url: Optional[str] = None
    error: Optional[str] = None
    line_hash: int = 0  # line_hash() of the raw line

    @property
    def ok(self) -> bool:
        return self.error is None


def parse_request_line(line: Union[str, bytes], line_number: int) -> Optional[RequestRecord]:
    """Parse one line; None for a blank line, a record with ``error`` set for a malformed one. Never raises."""
    raw = line.encode("utf-8", "surrogatepass") if isinstance(line, str) else line
    if line_number == 1 and raw.startswith(_BOM):
        raw = raw[len(_BOM):]
    if not raw.strip():
        return None
    digest = line_hash(raw)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        return RequestRecord(line_number, error=f"not UTF-8: {err}", line_hash=digest)
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as err:
        return RequestRecord(line_number, error=f"invalid JSON: {err.msg} (column {err.colno})", line_hash=digest)
    except RecursionError:
        return RequestRecord(line_number, error="invalid JSON: nested too deeply", line_hash=digest)
    except ValueError as err:  # e.g. an integer of more digits than Python converts
        return RequestRecord(line_number, error=f"invalid JSON: {err}", line_hash=digest)
    if not isinstance(obj, dict):
        return RequestRecord(line_number, error=f"expected a JSON object, got {type(obj).__name__}",
                             line_hash=digest)
    custom_id = _custom_id(obj.get("custom_id"))
    url = obj.get("url") if isinstance(obj.get("url"), str) else None
    problem = _lone_surrogate(raw, obj)
    if problem is not None:
        return RequestRecord(line_number, custom_id, url=url, error=problem, line_hash=digest)
    if "body" in obj:
        body = obj["body"]
        if not isinstance(body, dict):
            return RequestRecord(line_number, custom_id, url=url, error="'body' must be a JSON object",
                                 line_hash=digest)
        source = body
        params = {k: v for k, v in body.items() if k not in _PROMPT_KEYS}
    else:
        source = obj
        params = {k: v for k, v in obj.items() if k not in _PROMPT_KEYS and k != "custom_id"}
    try:
        prompt, token_ids, messages = _prompt_fields(source)
    except ValueError as err:
        return RequestRecord(line_number, custom_id, params=params, url=url, error=str(err), line_hash=digest)
    return RequestRecord(line_number, custom_id, prompt, token_ids, messages, params, url, line_hash=digest)


def _custom_id(value: Any) -> Optional[str]:
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def _lone_surrogate(raw: bytes, obj: dict) -> Optional[str]:
    """The error of a line holding a string that is not Unicode (a lone surrogate escape), else None."""
    if _SURROGATE_ESCAPE.search(raw) is None:  # the usual line: no escaped surrogate at all (a C-speed scan)
        return None
    try:
        json.dumps(obj, ensure_ascii=False).encode("utf-8")  # fails on a lone surrogate, passes on pairs
    except UnicodeEncodeError as err:
        bad = err.object[err.start:err.end]
        return f"a string holds a lone surrogate ({bad.encode('unicode_escape').decode()}), which is not Unicode"
    except (RecursionError, ValueError) as err:
        return f"invalid JSON: {err}"
    return None


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
            try:
                record = parse_request_line(line, line_number)
            except Exception as err:  # parse_request_line foresees every malformation it knows; not this one
                record = RequestRecord(line_number, error=f"unreadable line ({type(err).__name__}: {err})",
                                       line_hash=line_hash(line))
            if record is not None:
                yield record
        if bar is not None:
            bar.update(pending)
    finally:
        if bar is not None:
            bar.close()
