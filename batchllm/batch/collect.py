"""Read a whole batch file: name every line, skip what the output already has, turn bad lines into errors.

Every step a line goes through here (parse, name, validate, template, tokenize, store) either succeeds or
becomes that line's error: a ``RequestError`` with the code of the problem, or ``internal_error`` with the
exception's message for what no check foresaw. Nothing a line holds can stop the reading.

Names: a line's ``custom_id`` (a string, or an integer written as its decimal string); a line without one
gets ``auto-<digest of the line>-<k>`` (the k-th identical such line), which does not move when other lines
are added or removed. Real custom_ids of that form are refused, so the two never collide. The first line
with an id runs; later ones get a ``duplicate_custom_id`` error line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

from batchllm.batch.openai_format import RequestError, batch_request_from_record, internal_error
from batchllm.batch.requests_jsonl import RequestRecord, auto_custom_id, is_auto_custom_id, read_request_records
from batchllm.batch.results_file import DUPLICATE_CODE, InputManifest, ResumeState
from batchllm.batch.store import CompactRequests
from batchllm.chat import ChatOptions, render_chat

TEXT_BATCH = 512  # texts tokenized per tokenizer call (the fast tokenizer parallelises a batch)
CHANGED_LINES_POLICIES = ("refuse", "rerun")

EmitError = Callable[[str, RequestError], None]


@dataclass
class CollectOptions:
    seed: int = 0  # job seed: sampled requests without a seed get one derived from it and their custom_id
    default_max_tokens: Optional[int] = None
    progress: bool = False
    changed_lines: str = "refuse"  # a done custom_id whose input line changed: "refuse" the job or "rerun" it


@dataclass
class CollectedInput:
    """What reading the input found, besides the runnable requests and the error lines it emitted."""

    requests: CompactRequests
    line_hashes: dict = field(default_factory=dict)  # custom_id -> digest of its (first) line, every line
    changed: list = field(default_factory=list)  # done custom_ids whose line differs from the manifest's
    input_lines: int = 0
    already_done: int = 0


@dataclass
class _Pending:
    request: object  # BatchRequest
    text: Optional[str]  # to tokenize
    add_special_tokens: bool
    ids: Optional[np.ndarray]
    tokenizer_error: Optional[Exception] = None


class _Collector:
    def __init__(self, tokenizer, vocab_size: int, max_model_len: int, resume: ResumeState,
                 manifest: Optional[InputManifest], options: CollectOptions, emit_error: EmitError,
                 structured=None) -> None:
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.max_model_len = max_model_len
        self.resume = resume
        self.manifest = manifest
        self.options = options
        self.emit_error = emit_error
        self.out = CollectedInput(CompactRequests())
        self.duplicates: dict[str, int] = {}
        self.auto_occurrences: dict[int, int] = {}
        self.pending: list[_Pending] = []
        self.pending_texts = 0
        # The engine's StructuredOutputs when it runs in this process (its compiled constraints are the ones
        # the run uses), else one made for the first constrained line.
        self.structured = structured

    def name(self, record: RequestRecord) -> tuple[str, Optional[RequestError]]:
        if record.custom_id is None:
            occurrence = self.auto_occurrences[record.line_hash] = self.auto_occurrences.get(record.line_hash, 0) + 1
            return auto_custom_id(record.line_hash, occurrence), None
        if is_auto_custom_id(record.custom_id):
            return record.custom_id, RequestError(
                "invalid_request", f"line {record.line_number}: custom_id {record.custom_id!r} has the form "
                "run-batch gives lines without a custom_id (auto-<16 hex digits>-<n>); choose another", "custom_id")
        return record.custom_id, None

    def add(self, record: RequestRecord) -> None:
        self.out.input_lines += 1
        custom_id, naming_error = self.name(record)
        hashes = self.out.line_hashes
        if custom_id in hashes:
            n = self.duplicates[custom_id] = self.duplicates.get(custom_id, 0) + 1
            if n > self.resume.duplicate_notices.get(custom_id, 0):
                self.emit_error(custom_id, RequestError(
                    DUPLICATE_CODE, f"line {record.line_number}: custom_id {custom_id!r} was already used by an "
                    "earlier line; only the first one runs", "custom_id"))
            return
        hashes[custom_id] = record.line_hash
        if custom_id in self.resume.done:
            previous = self.manifest.line_hashes.get(custom_id) if self.manifest is not None else None
            if previous is None or previous == record.line_hash:
                self.out.already_done += 1
                return
            self.out.changed.append(custom_id)
            if self.options.changed_lines != "rerun":
                return
        if naming_error is not None:
            self.emit_error(custom_id, naming_error)
            return
        try:
            self.prepare(record, custom_id)
        except RequestError as err:
            self.emit_error(custom_id, err)
            return
        except Exception as err:  # no check foresaw it: this line's error, not the batch's
            self.emit_error(custom_id, internal_error("reading the request", err))
            return
        if self.pending_texts >= TEXT_BATCH or len(self.pending) >= 8 * TEXT_BATCH:
            self.flush()

    def prepare(self, record: RequestRecord, custom_id: str) -> None:
        request = batch_request_from_record(record, custom_id, self.vocab_size, self.options.seed,
                                            self.options.default_max_tokens)
        if request.params.structured_outputs is not None:
            self.check_constraint(request.params)
        tokenizer = self.tokenizer
        if request.kind == "chat":
            if tokenizer is None:
                raise RequestError("invalid_request", "a chat request needs the model's tokenizer (the job runs "
                                   "with --skip-tokenizer-init)", "messages")
            try:
                text = render_chat(tokenizer, request.messages, request.chat or ChatOptions())
            except Exception as err:  # template errors come in many types; they concern this line only
                raise RequestError("chat_template_error", f"the chat template failed: {err}", "messages") from err
            self.pending.append(_Pending(request, text, False, None))
            self.pending_texts += 1
        elif request.token_ids is not None:
            self.pending.append(_Pending(request, None, False, np.asarray(request.token_ids, dtype=np.int64)))
        else:
            if tokenizer is None:
                raise RequestError("invalid_request", "a text prompt needs the model's tokenizer (the job runs with "
                                   "--skip-tokenizer-init; send token ids)", "prompt")
            self.pending.append(_Pending(request, request.text, True, None))
            self.pending_texts += 1

    def check_constraint(self, params) -> None:
        """An output constraint that cannot compile is this line's error (each distinct one compiles once)."""
        if self.tokenizer is None:
            raise RequestError("invalid_request", "structured outputs need the model's tokenizer (the job runs "
                               "with --skip-tokenizer-init)", "response_format")
        if self.structured is None:
            from batchllm.engine.structured_outputs import StructuredOutputs

            self.structured = StructuredOutputs(self.tokenizer, self.vocab_size)
        problem = self.structured.problem(params)
        if problem is not None:
            raise RequestError("invalid_request", f"the output constraint is invalid: {problem}", "response_format")

    def _tokenize(self, items: list[_Pending], special: bool) -> None:
        """Token ids for each item; when the batched call fails, each text alone, so only the bad one fails."""
        try:
            encoded = self.tokenizer([p.text for p in items], add_special_tokens=special)["input_ids"]
        except Exception as err:  # tokenizers raise many types; the failure is one of these texts'
            if len(items) == 1:
                items[0].tokenizer_error = err
            else:
                for p in items:
                    self._tokenize([p], special)
            return
        for p, ids in zip(items, encoded):
            p.ids = np.asarray(ids, dtype=np.int64)

    def flush(self) -> None:
        for special in (True, False):
            items = [p for p in self.pending if p.ids is None and p.add_special_tokens == special]
            if items:
                self._tokenize(items, special)
        for p in self.pending:
            custom_id = p.request.custom_id
            if p.tokenizer_error is not None:
                err = p.tokenizer_error
                self.emit_error(custom_id, RequestError(
                    "invalid_prompt", f"the tokenizer failed on this prompt: {type(err).__name__}: {err}",
                    "messages" if p.request.kind == "chat" else "prompt"))
                continue
            error = prompt_error(p.ids, self.vocab_size, self.max_model_len)
            if error is not None:
                self.emit_error(custom_id, error)
                continue
            try:
                self.out.requests.add(p.request, p.ids, self.max_model_len)
            except Exception as err:
                self.emit_error(custom_id, internal_error("storing the request", err))
        self.pending.clear()
        self.pending_texts = 0


def collect_requests(path: str, tokenizer, vocab_size: int, max_model_len: int, resume: ResumeState,
                     manifest: Optional[InputManifest], options: CollectOptions,
                     emit_error: EmitError, structured=None) -> CollectedInput:
    """Stream the input: name each line, skip what the output has, report bad requests, keep runnable ones.

    structured: the engine's ``StructuredOutputs`` when it runs in this process, so that constraints are
    compiled once for checking and running (default: the collector makes its own)."""
    collector = _Collector(tokenizer, vocab_size, max_model_len, resume, manifest, options, emit_error, structured)
    for record in read_request_records(path, progress=options.progress):
        collector.add(record)
    collector.flush()
    return collector.out


def prompt_error(ids: np.ndarray, vocab_size: int, max_model_len: int) -> Optional[RequestError]:
    """The checks of engine/validation.py's prompt_errors, vectorised."""
    if len(ids) == 0:
        return RequestError("invalid_prompt", "the prompt is empty (it must have at least one token)", "prompt")
    if len(ids) >= max_model_len:
        return RequestError(
            "context_length_exceeded",
            f"the prompt has {len(ids)} tokens, but max_model_len={max_model_len} leaves no room for output",
            "prompt")
    if int(ids.min()) < 0 or int(ids.max()) >= vocab_size:
        bad = ids[(ids < 0) | (ids >= vocab_size)][:5].tolist()
        return RequestError("invalid_prompt", f"token ids {bad} are outside the vocabulary [0, {vocab_size})", "prompt")
    return None
