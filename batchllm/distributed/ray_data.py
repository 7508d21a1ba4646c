"""Generation over a ``ray.data.Dataset``: its rows become a request file, run by the batch job, joined back.

Users whose prompts already live in Ray Data get the same pipeline as ``run-batch`` (per-line validation and
errors, the prefix analysis, the planner of whole prefix groups, data-parallel replicas, resume), because this
module only translates: rows -> plain JSONL request lines -> ``run_batch_file`` -> result lines -> columns.
Nothing here runs a request itself.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import tempfile
from typing import TYPE_CHECKING, Any, Iterator, Optional

import numpy as np

from batchllm.batch.job import JobOptions
from batchllm.batch.openai_format import SAMPLING_FIELDS, RequestError, sampling_params_from_body
from batchllm.batch.results_file import OutputRefusedError, encode_line
from batchllm.distributed.options import DataParallelOptions, import_ray, replica_llm_kwargs

if TYPE_CHECKING:
    import pyarrow as pa
    import ray.data

PROMPT_COLUMNS = ("messages", "prompt", "prompt_token_ids")
OUTPUT_COLUMNS = ("generated_text", "prompt_tokens", "completion_tokens", "finish_reason", "error")
# Sampling fields that must be integers: pandas turns an int column with a missing value into floats (8.0),
# which the batch job would rightly refuse as "must be an integer"; an integral float is taken as the int.
INT_FIELDS = frozenset({"max_tokens", "max_completion_tokens", "top_k", "seed", "min_tokens", "n"})
ROW_ID_PREFIX = "row-"
READ_BATCH_ROWS = 4096
OUTPUT_BLOCK_ROWS = 4096
REQUESTS_FILE = "requests.jsonl"
RESULTS_FILE = "results.jsonl"

logger = logging.getLogger(__name__)


def generate(dataset: "ray.data.Dataset", model: str, *, data_parallel: int = 1,
             gpus_per_replica: Optional[float] = None, ray_address: Optional[str] = None,
             llm_kwargs: Optional[dict] = None, sampling: Optional[dict] = None, work_dir: Optional[str] = None,
             seed: int = 0, default_max_tokens: Optional[int] = None) -> "ray.data.Dataset":
    """Generate a completion for every row of ``dataset``; a new dataset with the results as columns.

    dataset: exactly one prompt column -- ``messages`` (a chat conversation, the model's chat template is
        applied), ``prompt`` (text) or ``prompt_token_ids`` (token ids) -- plus optional per-row sampling
        columns named as in the OpenAI body (``max_tokens``, ``temperature``, ``top_p``, ``seed``, ``stop``,
        ``ignore_eos``, ...: ``batchllm.batch.openai_format.SAMPLING_FIELDS``). Other columns pass through.
    model: the model path (each replica loads its own copy).
    data_parallel: engine replicas. 1 without ``ray_address``: one engine in this process; otherwise Ray
        actors fed whole prefix groups (see ``batchllm.distributed``). ``gpus_per_replica``: GPUs per replica
        (0: CPU); for the in-process engine, 0 also means CPU and a fraction that share of the GPU's memory.
    ray_address: an existing Ray cluster; initialised here when Ray is not yet (the dataset runs there too).
    llm_kwargs: the other ``LLM`` arguments (max_num_seqs, max_model_len, ...).
    sampling: defaults for the sampling fields, used where the column is absent or the row's value is null.
    work_dir: where the request and results files go (a temporary folder, removed after, by default). With
        a work_dir a rerun over the same rows resumes: finished rows are not generated again.
    seed: job seed (sampled rows without a seed get one derived from it and the row). default_max_tokens:
        max_tokens where neither the row nor ``sampling`` gives one (None: up to the model's length).

    Returns the input columns, in the order the rows were read, plus ``generated_text`` (str; None for a
    failed row), ``prompt_tokens`` and ``completion_tokens`` (int; 0 for a failed row), ``finish_reason``
    (str or None) and ``error`` (None, or ``"code: message"``: a bad row gets an error, never fails the
    dataset). Row i is the i-th row ``iter_batches`` yields; for a pipeline whose order is not deterministic
    set ``DataContext.get_current().execution_options.preserve_order = True`` to resume with a work_dir.

    Memory: the driver materialises the dataset's rows once -- as Arrow batches, kept to build the output,
    and as a request file with token ids written as plain JSON ints -- then the engine pipeline is the same
    as run-batch's (a compact store of token ids, the requests of one pass at a time in the engine).

    Raises ValueError, before anything is computed, when the dataset has no prompt column or more than one,
    a column would be overwritten by an output column, or a setting (``sampling``, ``data_parallel``,
    ``gpus_per_replica``, ``default_max_tokens``) is invalid.
    """
    ray = import_ray()
    import pyarrow as pa

    # Every setting is checked before the dataset is read: a typo must not cost a pass over the data.
    options = DataParallelOptions(num_replicas=data_parallel, gpus_per_replica=gpus_per_replica,
                                  ray_address=ray_address)
    JobOptions(seed=seed, default_max_tokens=default_max_tokens)  # raises on a bad value; run_batch_file remakes it
    sampling = dict(sampling or {})
    columns = _check_columns(dataset)
    _check_sampling(sampling)
    prompt_column = next(c for c in PROMPT_COLUMNS if c in columns)
    sampling_columns = [c for c in columns if c in SAMPLING_FIELDS]
    if ray_address is not None and not ray.is_initialized():
        ray.init(address=ray_address, log_to_driver=False)  # so that the dataset is read on that cluster too

    with _work_folder(work_dir) as folder:
        requests_path = os.path.join(folder, REQUESTS_FILE)
        results_path = os.path.join(folder, RESULTS_FILE)
        table = _write_requests(dataset, requests_path, prompt_column, sampling_columns, sampling)
        n = table.num_rows
        if n:
            _run(model, requests_path, results_path, resume=work_dir is not None, options=options,
                 llm_kwargs=dict(llm_kwargs or {}), seed=seed, default_max_tokens=default_max_tokens)
            results = _read_results(results_path, n)
        else:
            results = _Results(0)
    table = results.append_to(table, pa)
    blocks = [table.slice(start, OUTPUT_BLOCK_ROWS) for start in range(0, max(n, 1), OUTPUT_BLOCK_ROWS)]
    return ray.data.from_arrow(blocks)


# ---- checks (before any compute) -----------------------------------------------------------------------


def _check_columns(dataset: "ray.data.Dataset") -> list[str]:
    schema = dataset.schema()
    if schema is None:
        raise ValueError("the dataset has no schema (no rows and no columns): nothing to generate from")
    columns = list(schema.names)
    prompts = [c for c in PROMPT_COLUMNS if c in columns]
    if len(prompts) != 1:
        found = f"it has {prompts}" if prompts else f"its columns are {columns}"
        raise ValueError(f"the dataset needs exactly one prompt column of {list(PROMPT_COLUMNS)}; {found}")
    taken = [c for c in OUTPUT_COLUMNS if c in columns]
    if taken:
        raise ValueError(f"the dataset already has column(s) {taken}, which the output adds; rename or drop them")
    return columns


def _check_sampling(sampling: dict) -> None:
    unknown = sorted(k for k in sampling if k not in SAMPLING_FIELDS)
    if unknown:
        raise ValueError(f"sampling has unknown field(s) {unknown}; use any of {sorted(SAMPLING_FIELDS)}")
    try:
        # Checked once here, not as the same error on every row; token-id ranges are the rows' business.
        sampling_params_from_body(sampling, "completion", vocab_size=2**31 - 1)
    except RequestError as err:
        raise ValueError(f"sampling: {err.message}") from None


# ---- rows -> request file ---------------------------------------------------------------------------------


@contextlib.contextmanager
def _work_folder(work_dir: Optional[str]) -> Iterator[str]:
    """The user's work_dir (kept, for resuming), or a temporary folder removed on exit."""
    if work_dir is not None:
        os.makedirs(work_dir, exist_ok=True)
        yield work_dir
        return
    with tempfile.TemporaryDirectory(prefix="batchllm-ray-data-") as folder:
        yield folder


def _plain(value: Any) -> Any:
    """numpy values (tensor columns come back as arrays) as plain Python, for JSON."""
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value] if value.dtype == object else value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _column_values(batch: "pa.Table", name: str) -> list:
    import pyarrow as pa

    column = batch.column(name)
    values = column.to_pylist()
    if isinstance(column.type, pa.ExtensionType):  # Ray's tensor types give numpy arrays per row
        values = [_plain(v) for v in values]
    return values


def _message(message: Any) -> Any:
    # An Arrow struct column gives every message every key seen in the column, null where a message had
    # none (a "name" on one message appears as None on all others): drop those again, but keep a null
    # content, which the job reads as "".
    if isinstance(message, dict):
        return {k: v for k, v in message.items() if v is not None or k in ("role", "content")}
    return message


def _sampling_value(field: str, value: Any) -> Any:
    if isinstance(value, float):
        if math.isnan(value):
            return None  # pandas' missing value
        if field in INT_FIELDS and value.is_integer():
            return int(value)
    return value


def _batches(dataset: "ray.data.Dataset") -> Iterator["pa.Table"]:
    for batch in dataset.iter_batches(batch_size=READ_BATCH_ROWS, batch_format="pyarrow"):
        if batch.num_rows:
            yield batch


def _write_requests(dataset: "ray.data.Dataset", path: str, prompt_column: str, sampling_columns: list[str],
                    sampling: dict) -> "pa.Table":
    """Write one plain request line per row (custom_id ``row-<i>``); the rows as one Arrow table."""
    import pyarrow as pa

    tables = []
    index = 0
    tmp = f"{path}.tmp-{os.getpid()}"
    # Written aside and renamed: a job resuming from this work_dir never reads a half-written input.
    with open(tmp, "wb") as f:
        for batch in _batches(dataset):
            tables.append(batch)
            prompts = _column_values(batch, prompt_column)
            per_row = {c: _column_values(batch, c) for c in sampling_columns}
            for j, prompt in enumerate(prompts):
                if prompt_column == "messages" and isinstance(prompt, list):
                    prompt = [_message(m) for m in prompt]
                line: dict[str, Any] = {"custom_id": f"{ROW_ID_PREFIX}{index}", prompt_column: prompt}
                for field, default in sampling.items():
                    line[field] = default
                for field, values in per_row.items():
                    value = _sampling_value(field, values[j])
                    if value is not None:
                        line[field] = value
                f.write(encode_line(line))  # ensure_ascii only where a string is not Unicode
                index += 1
    os.replace(tmp, path)
    if not tables:
        return _empty_table(dataset)
    # Batches may disagree on a column's type (all-null in one batch, int64 in the next): promote to one.
    return pa.concat_tables(tables, promote_options="default")


def _empty_table(dataset: "ray.data.Dataset") -> "pa.Table":
    import pyarrow as pa

    schema = dataset.schema()
    base = getattr(schema, "base_schema", None)
    if isinstance(base, pa.Schema):
        return base.empty_table()
    return pa.table({name: pa.array([], type=pa.null()) for name in schema.names})


# ---- the job ------------------------------------------------------------------------------------------------


def _run(model: str, requests_path: str, results_path: str, *, resume: bool, options: DataParallelOptions,
         llm_kwargs: dict, seed: int, default_max_tokens: Optional[int]) -> None:
    """The batch job over the request file: one engine here, or replicas over Ray."""
    from batchllm.batch import run_batch_file
    from batchllm.distributed.dispatch import DataParallelExecutor

    job = dict(overwrite=not resume, progress=False, log=logger.info, seed=seed, default_max_tokens=default_max_tokens)
    try:
        if options.num_replicas == 1 and options.ray_address is None:
            if options.gpus_per_replica is not None:
                # The in-process engine takes gpus_per_replica as one replica would (0: CPU, 0.5: half a GPU).
                llm_kwargs = replica_llm_kwargs(llm_kwargs, options.gpus_per_replica)
            run_batch_file(model, requests_path, results_path, llm_kwargs=llm_kwargs, **job)
            return
        # Started only now, after the rows were read: replicas hold CPUs (or GPUs) that reading the dataset
        # may need, and on a small cluster the read would wait for them forever.
        with DataParallelExecutor.start(model, options, llm_kwargs, log=logger.info) as executor:
            run_batch_file(executor, requests_path, results_path, **job)
    except OutputRefusedError as err:
        # run-batch's advice names command-line flags; say what it means for a work_dir.
        raise OutputRefusedError(f"{err} -- generate(): the rows differ from those whose results are in "
                                 f"work_dir {os.path.dirname(results_path)!r}; give another work_dir or empty it"
                                 ) from None


# ---- result file -> columns ------------------------------------------------------------------------------


class _Results:
    """The output columns, filled by row index."""

    def __init__(self, n: int) -> None:
        self.text: list = [None] * n
        self.prompt_tokens = np.zeros(n, dtype=np.int64)
        self.completion_tokens = np.zeros(n, dtype=np.int64)
        self.finish_reason: list = [None] * n
        self.error: list = [None] * n
        self.seen = np.zeros(n, dtype=bool)

    def add(self, i: int, result: dict) -> None:
        self.seen[i] = True
        error = result.get("error")
        if error is not None:
            message = str(error.get("message", ""))
            # Each row is one line, line i + 1, of a file the user never sees: say "row i" instead.
            prefix = f"line {i + 1}: "
            if message.startswith(prefix):
                message = f"row {i}: " + message[len(prefix):]
            self.error[i] = f"{error.get('code')}: {message}"
            return
        body = result["response"]["body"]
        choice = body["choices"][0]
        self.text[i] = choice["message"]["content"] if "message" in choice else choice["text"]
        self.finish_reason[i] = choice.get("finish_reason")
        self.prompt_tokens[i] = body["usage"]["prompt_tokens"]
        self.completion_tokens[i] = body["usage"]["completion_tokens"]

    def append_to(self, table: "pa.Table", pa) -> "pa.Table":
        # Explicit types: a column of all-None texts (every row failed) must still be a string column.
        for name, values, kind in (("generated_text", self.text, pa.string()),
                                   ("prompt_tokens", self.prompt_tokens, pa.int64()),
                                   ("completion_tokens", self.completion_tokens, pa.int64()),
                                   ("finish_reason", self.finish_reason, pa.string()),
                                   ("error", self.error, pa.string())):
            table = table.append_column(name, pa.array(values, type=kind))
        return table


def _read_results(path: str, n: int) -> _Results:
    """Join the result lines back by row index (streamed: one line in memory at a time)."""
    results = _Results(n)
    with open(path, "rb") as f:
        for raw in f:
            if not raw.endswith(b"\n") or not raw.strip():
                continue
            result = json.loads(raw)
            custom_id = result.get("custom_id", "")
            if not custom_id.startswith(ROW_ID_PREFIX) or not custom_id[len(ROW_ID_PREFIX):].isdigit():
                continue
            i = int(custom_id[len(ROW_ID_PREFIX):])
            if i < n:  # a longer earlier dataset in the same work_dir left rows beyond this one's
                results.add(i, result)
    missing = np.flatnonzero(~results.seen)
    if len(missing):
        shown = ", ".join(str(int(i)) for i in missing[:10])
        raise RuntimeError(f"{len(missing):,} rows have no result in {path} (rows {shown}"
                           f"{' ...' if len(missing) > 10 else ''}); rerun with the same work_dir to resume")
    return results
