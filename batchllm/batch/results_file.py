"""The results file: append one line per finished request, flush it, and resume from what is already there.

Every line is written with one ``write`` and flushed at once, so a killed job loses at most the line being
written; ``os.fsync`` runs every ``fsync_every`` lines / ``fsync_seconds`` and at close (so a machine crash
loses at most that much). On resume, a torn last line (no newline, or not JSON) is cut off and every
``custom_id`` present is skipped by the new run.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field

DUPLICATE_CODE = "duplicate_custom_id"


class OutputLockedError(RuntimeError):
    pass


@dataclass
class ResumeState:
    """What an existing output file already holds.

    done: custom_ids with a final line (a result, or an error other than a duplicate notice).
    duplicate_notices: per custom_id, how many "duplicate custom_id" error lines were written for later
        occurrences of it in the input.
    lines: valid lines found; truncated_bytes: bytes of a torn last line that were cut off.
    """

    done: set = field(default_factory=set)
    duplicate_notices: dict = field(default_factory=dict)
    lines: int = 0
    bad_lines: int = 0
    truncated_bytes: int = 0


def scan_output(path: str, repair: bool = True) -> ResumeState:
    """Read an existing output file (missing = empty). With ``repair``, cut a torn last line off the file."""
    state = ResumeState()
    if not os.path.exists(path):
        return state
    good_end = 0
    with open(path, "rb") as f:
        pos = 0
        for raw in f:
            end = pos + len(raw)
            complete = raw.endswith(b"\n")
            record = None
            try:
                record = json.loads(raw)
            except (ValueError, UnicodeDecodeError):
                pass
            if not complete and record is None:
                break  # torn last line: everything from pos on goes
            pos = end
            good_end = end
            if not isinstance(record, dict) or not isinstance(record.get("custom_id"), str):
                if raw.strip():
                    state.bad_lines += 1
                continue
            state.lines += 1
            custom_id = record["custom_id"]
            error = record.get("error")
            if isinstance(error, dict) and error.get("code") == DUPLICATE_CODE:
                state.duplicate_notices[custom_id] = state.duplicate_notices.get(custom_id, 0) + 1
            else:
                state.done.add(custom_id)
    size = os.path.getsize(path)
    if good_end < size:
        state.truncated_bytes = size - good_end
        if repair:
            with open(path, "r+b") as f:
                f.truncate(good_end)
    elif size and repair:
        # A complete JSON last line written without its newline: add it so appends start a fresh line.
        with open(path, "rb") as f:
            f.seek(size - 1)
            last = f.read(1)
        if last != b"\n":
            with open(path, "ab") as f:
                f.write(b"\n")
    return state


class ResultsWriter:
    """Append-only JSONL writer: one write + flush per line, periodic fsync, an exclusive lock on the file."""

    def __init__(self, path: str, fsync_every: int = 256, fsync_seconds: float = 5.0, truncate: bool = False) -> None:
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
        self.path = path
        self._f = open(path, "wb" if truncate else "ab", buffering=0)
        try:
            import fcntl

            fcntl.flock(self._f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # not POSIX: no lock
            pass
        except OSError as err:
            self._f.close()
            raise OutputLockedError(f"{path} is being written by another run-batch job") from err
        self.fsync_every = fsync_every
        self.fsync_seconds = fsync_seconds
        self._unsynced = 0
        self._last_sync = time.monotonic()
        self.lines_written = 0

    def write(self, record: dict) -> None:
        data = (json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")
        view = memoryview(data)
        while view:  # unbuffered: one write syscall for the whole line in practice
            n = self._f.write(view)
            view = view[n:]
        self.lines_written += 1
        self._unsynced += 1
        if self._unsynced >= self.fsync_every or time.monotonic() - self._last_sync >= self.fsync_seconds:
            self.sync()

    def sync(self) -> None:
        if self._unsynced:
            os.fsync(self._f.fileno())
            self._unsynced = 0
        self._last_sync = time.monotonic()

    def close(self) -> None:
        if not self._f.closed:
            try:
                self.sync()
            finally:
                self._f.close()

    def __enter__(self) -> "ResultsWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_results(path: str) -> list[dict]:
    """All complete lines of an output file (for tests and small files)."""
    out: list[dict] = []
    if not os.path.exists(path):
        return out
    with open(path, "rb") as f:
        for raw in f:
            if raw.endswith(b"\n") and raw.strip():
                out.append(json.loads(raw))
    return out
