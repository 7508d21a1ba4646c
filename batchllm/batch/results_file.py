"""The results file: one writer at a time, one line per finished request, resumable after any stop.

``ResultsFile.open`` takes an exclusive lock on the output before anything reads or changes it, so a job
refused by the lock leaves the file byte for byte as it was. Under the lock the job scans the file
(``scan``), cuts a torn last line, or truncates it (``--overwrite``). Every line is written with one
``write`` and no buffering, so a killed job loses at most the line being written; ``os.fsync`` runs every
``fsync_every`` lines / ``fsync_seconds`` and at close (a machine crash loses at most that much).

Beside the output, ``<output>.manifest.json`` records what the results were computed from: a digest of
every input line by custom_id (see ``InputManifest``). It is written (atomically) before the first result
line of a run, so every result line in the file was computed from a line whose digest the manifest holds.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from typing import Optional

DUPLICATE_CODE = "duplicate_custom_id"
MANIFEST_FORMAT = "batchllm.run-batch.manifest"
MANIFEST_VERSION = 1


class OutputLockedError(RuntimeError):
    pass


class OutputRefusedError(RuntimeError):
    """The output holds something this job must not resume from or append to; the message says what."""


@dataclass
class ResumeState:
    """What an existing output file already holds.

    done: custom_ids with a final line (a result, or an error other than a duplicate notice).
    duplicate_notices: per custom_id, how many "duplicate custom_id" error lines were written for later
        occurrences of it in the input.
    lines: result lines found; truncated_bytes: bytes of a torn last line that were cut off.
    not_results: (line number, why) of the first lines that are not result lines.
    """

    done: set = field(default_factory=set)
    duplicate_notices: dict = field(default_factory=dict)
    lines: int = 0
    not_results: list = field(default_factory=list)
    num_not_results: int = 0
    truncated_bytes: int = 0


def result_line_problem(record: object) -> Optional[str]:
    """Why a parsed line is not a result line of run-batch (None when it is one)."""
    if not isinstance(record, dict):
        return "not a JSON object"
    if not isinstance(record.get("custom_id"), str):
        return "no string custom_id"
    if "response" not in record or "error" not in record:
        return "no 'response' and 'error' fields (a request line, not a result line?)"
    if not isinstance(record["response"], dict) and not isinstance(record["error"], dict):
        return "neither a response nor an error"
    return None


def is_duplicate_notice(record: dict) -> bool:
    """The error line of a later line that reused a custom_id (the id's own result is another line)."""
    error = record.get("error")
    return isinstance(error, dict) and error.get("code") == DUPLICATE_CODE


def _scan(f, state: ResumeState) -> int:
    """Read result lines from the binary file ``f`` (at its start) into ``state``; the end of the last good line."""
    pos = good_end = 0
    for line_number, raw in enumerate(f, start=1):
        end = pos + len(raw)
        complete = raw.endswith(b"\n")
        record = None
        try:
            record = json.loads(raw)
        except (ValueError, UnicodeDecodeError, RecursionError):
            pass
        if not complete and record is None:
            break  # torn last line: everything from pos on goes
        pos = good_end = end
        if not raw.strip():
            continue
        problem = result_line_problem(record)
        if problem is not None:
            state.num_not_results += 1
            if len(state.not_results) < 5:
                state.not_results.append((line_number, problem))
            continue
        state.lines += 1
        custom_id = record["custom_id"]
        if is_duplicate_notice(record):
            state.duplicate_notices[custom_id] = state.duplicate_notices.get(custom_id, 0) + 1
        else:
            state.done.add(custom_id)
    return good_end


def scan_output(path: str) -> ResumeState:
    """Read an existing output without changing it (missing = empty): for dry runs and tests."""
    state = ResumeState()
    if os.path.exists(path):
        with open(path, "rb") as f:
            good_end = _scan(f, state)
        state.truncated_bytes = os.path.getsize(path) - good_end
    return state


def manifest_path(output_path: str) -> str:
    return output_path + ".manifest.json"


@dataclass
class InputManifest:
    """What the results in an output were computed from: the input's path and each line's digest by custom_id."""

    input_path: str
    line_hashes: dict  # custom_id -> line digest (int; see requests_jsonl.line_hash)
    model: Optional[str] = None

    def to_json(self) -> dict:
        return {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "input": self.input_path,
                "model": self.model, "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "lines": {cid: f"{h:016x}" for cid, h in self.line_hashes.items()}}

    @staticmethod
    def load(path: str) -> Optional["InputManifest"]:
        """The manifest at ``path``; None if there is none; OutputRefusedError if it is not one of ours."""
        if not os.path.exists(path):
            return None
        try:
            with open(path, "rb") as f:
                data = json.load(f)
            if data.get("format") != MANIFEST_FORMAT or data.get("version") != MANIFEST_VERSION:
                raise ValueError(f"format {data.get('format')!r} version {data.get('version')!r}")
            hashes = {cid: int(h, 16) for cid, h in data["lines"].items()}
            return InputManifest(str(data["input"]), hashes, data.get("model"))
        except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError) as err:
            raise OutputRefusedError(f"{path} is not a run-batch manifest ({err}); remove it, or use --overwrite "
                                     "to start the output over") from None

    def save(self, path: str) -> None:
        """Write atomically: a reader (or a kill) sees the old manifest or the new one, never a part."""
        tmp = f"{path}.tmp-{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(self.to_json(), f, separators=(",", ":"))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)


def encode_line(record: dict) -> bytes:
    """One JSON line, UTF-8."""
    try:
        text = json.dumps(record, ensure_ascii=False, separators=(",", ":"))
        return (text + "\n").encode("utf-8")
    except UnicodeEncodeError:
        # A string that is not Unicode (a lone surrogate in a custom_id): escaped as JSON \\uXXXX, it reads
        # back as the same string, so the line is still joined and resumed on.
        return (json.dumps(record, ensure_ascii=True, separators=(",", ":")) + "\n").encode("ascii")


class ResultsFile:
    """The locked output of one job: scan, repair or truncate it, then append result lines."""

    def __init__(self, path: str, f, created: bool, fsync_every: int = 256, fsync_seconds: float = 5.0) -> None:
        self.path = path
        self._f = f
        self._created = created
        self.fsync_every = fsync_every
        self.fsync_seconds = fsync_seconds
        self._unsynced = 0
        self._last_sync = time.monotonic()
        self.lines_written = 0

    @classmethod
    def open(cls, path: str, **kwargs) -> "ResultsFile":
        """Lock ``path`` (created if missing) for this job; OutputLockedError if another job holds it."""
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
        if os.path.exists(path) and not os.path.isfile(path):
            raise OutputRefusedError(f"{path} is not a regular file")
        while True:
            created = not os.path.exists(path)
            f = open(path, "a+b", buffering=0)  # append: opening changes no byte of an existing file
            try:
                _lock(f)
                # The lock is on the file we opened; if a rewrite replaced the path meanwhile, lock the new one.
                try:
                    current = os.stat(path)
                except FileNotFoundError:
                    current = None
                opened = os.fstat(f.fileno())
                if current is not None and (current.st_dev, current.st_ino) == (opened.st_dev, opened.st_ino):
                    return cls(path, f, created, **kwargs)
            except BaseException:
                f.close()
                raise
            f.close()

    def scan(self) -> ResumeState:
        """What the file holds, read under the lock; nothing is changed (``repair`` does that)."""
        state = ResumeState()
        fd = self._f.fileno()
        with os.fdopen(os.dup(fd), "rb") as reader:
            reader.seek(0)
            good_end = _scan(reader, state)
        state.truncated_bytes = os.fstat(fd).st_size - good_end
        return state

    def repair(self, state: ResumeState) -> None:
        """Cut the torn last line ``scan`` found, or end a complete last line that lacks its newline."""
        fd = self._f.fileno()
        size = os.fstat(fd).st_size
        if state.truncated_bytes:
            os.ftruncate(fd, size - state.truncated_bytes)
        elif size and os.pread(fd, 1, size - 1) != b"\n":
            self._f.write(b"\n")  # so that appends start a fresh line

    def truncate(self) -> None:
        os.ftruncate(self._f.fileno(), 0)

    def rewrite_without(self, custom_ids: set) -> int:
        """Drop the result lines of these custom_ids, not their duplicate notices (crash-safe: a new file
        replaces the old one); the number of lines dropped."""
        tmp = f"{self.path}.rewrite-{os.getpid()}"
        dropped = 0
        new = open(tmp, "a+b", buffering=0)
        try:
            _lock(new)
            with os.fdopen(os.dup(self._f.fileno()), "rb") as reader:
                reader.seek(0)
                for raw in reader:
                    try:
                        record = json.loads(raw)
                    except (ValueError, RecursionError):
                        record = None
                    if isinstance(record, dict) and record.get("custom_id") in custom_ids \
                            and not is_duplicate_notice(record):
                        dropped += 1
                    else:
                        new.write(raw)
            os.fsync(new.fileno())
            os.replace(tmp, self.path)  # the new file is locked before it takes the name
        except BaseException:
            new.close()
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        self._f.close()
        self._f = new
        return dropped

    def write(self, record: dict) -> None:
        self.write_line(encode_line(record))

    def write_line(self, data: bytes) -> None:
        """Append one encoded line (``encode_line``)."""
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

    def close(self, failed: bool = False) -> None:
        """Sync and unlock. A job that ``failed`` before writing anything leaves no file it created behind."""
        if self._f.closed:
            return
        try:
            if failed and self._created and os.fstat(self._f.fileno()).st_size == 0:
                for path in (self.path, manifest_path(self.path)):
                    if os.path.exists(path):
                        os.unlink(path)
                return
            self.sync()
        finally:
            self._f.close()

    def __enter__(self) -> "ResultsFile":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(failed=exc_type is not None)


def _lock(f) -> None:
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        return
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        raise OutputLockedError(f"{f.name} is being written by another run-batch job") from err


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
