"""The error of one request line (it becomes that line's error line), and values quoted short in messages."""

from __future__ import annotations

import reprlib
from dataclasses import dataclass
from typing import Any, Optional

_REPR = reprlib.Repr()  # keyword arguments only from Python 3.12
_REPR.maxstring = _REPR.maxother = 60
_REPR.maxlist = _REPR.maxdict = 8


@dataclass(frozen=True)
class RequestError(Exception):
    """A problem with one request; becomes that request's error line."""

    code: str
    message: str
    param: Optional[str] = None
    status_code: int = 400

    def __str__(self) -> str:
        return self.message


def short_repr(value: Any) -> str:
    """repr of a field value for an error message, cut short (a bad field may be megabytes long)."""
    return _REPR.repr(value)
