"""The OpenAI-format batch job as a library: read a request file, run it through an ``LLM``, write results.

Layer order inside: ``requests_jsonl`` (lines -> records) and ``openai_format`` (records -> requests, outputs
-> result lines) at the bottom, ``results_file`` (the locked, resumable output), ``store`` (the compact
request store), ``collect`` (read + validate + tokenize), ``summary`` and ``memory_plan`` (reports), and
``job`` (the run) on top. ``batchllm.entrypoints.run_batch`` is the command line over it.
"""

from batchllm.batch.job import JobOptions, run_batch_file
from batchllm.batch.results_file import OutputLockedError, OutputRefusedError
from batchllm.batch.summary import BatchSummary

__all__ = ["BatchSummary", "JobOptions", "OutputLockedError", "OutputRefusedError", "run_batch_file"]
