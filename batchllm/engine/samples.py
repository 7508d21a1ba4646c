"""n samples of one prompt (``SamplingParams.n``): the engine requests they run as, and the one output
they come back as.

A prompt with n samples becomes n engine requests with the same prompt token ids and params with n=1. The
scheduler clusters identical prompts into a prefix group like any other shared prefix, so the prompt's
KV is computed once up to its last whole block below the final token (``prefix.analysis``: each member
keeps at least its last token, whose logits start its decoding) and every sample prefills only the rest.
A prompt whose shareable part is shorter than the group threshold (``min_shared_len``, one block by
default) is prefilled by each sample itself: n short prefills cost little.
"""

from __future__ import annotations

import bisect
import dataclasses
from array import array
from typing import Optional

from batchllm.outputs import RequestMetrics, RequestOutput
from batchllm.sampling_params import INT64_MIN, SamplingParams

_INT64_SPAN = 2**64


def sample_seed(seed: int, index: int) -> int:
    """Seed of sample ``index`` of a seeded request: seed + index (vLLM's rule), wrapped into int64.

    Wrapping, rather than refusing seeds near 2**63 - 1, keeps every valid seed valid for any n (the batch
    job derives seeds anywhere in [0, 2**63)); torch's generator refuses seeds outside int64.
    """
    return (seed + index - INT64_MIN) % _INT64_SPAN + INT64_MIN


def sample_params(params: SamplingParams) -> list[SamplingParams]:
    """The params of each of ``params.n`` samples: n=1, and seed + i when a seed is given.

    Without a seed every sample draws from the engine's shared stream (as unseeded requests do), so only
    seeded samples are reproducible independently of the rest of the batch.
    """
    n = params.n
    if n == 1:
        return [params]  # the common case keeps its object: no copy per request
    return [dataclasses.replace(params, n=1, seed=None if params.seed is None else sample_seed(params.seed, i))
            for i in range(n)]


def sample_request_id(parent_id: str, index: int, n: int) -> str:
    """An engine request id per sample: the prompt's own id when n=1, else vLLM's ``<index>_<parent>``."""
    return parent_id if n == 1 else f"{index}_{parent_id}"


def merge_samples(parent_id: str, outputs: list[RequestOutput]) -> RequestOutput:
    """One RequestOutput of a prompt from its samples' outputs (in sample order): ``outputs[i].index == i``.

    error: None when every sample succeeded, else which samples failed and why (the others' outputs are
    kept, as a failed request keeps the tokens it received).
    """
    first = outputs[0]
    completions = [dataclasses.replace(o.outputs[0], index=i) for i, o in enumerate(outputs)]
    errors = [f"sample {i} of {len(outputs)}: {o.error}" for i, o in enumerate(outputs) if o.error is not None]
    return RequestOutput(
        request_id=parent_id,
        prompt=first.prompt,
        prompt_token_ids=first.prompt_token_ids,
        outputs=completions,
        finished=all(o.finished for o in outputs),
        metrics=_merged_metrics([o.metrics for o in outputs]),
        error="; ".join(errors) if errors else None,
    )


def _merged_metrics(metrics: list[RequestMetrics]) -> RequestMetrics:
    """The prompt's timeline: first arrival, schedule and token of any sample; last finish; all preemptions."""

    def earliest(name: str) -> Optional[float]:
        values = [getattr(m, name) for m in metrics if getattr(m, name) is not None]
        return min(values) if values else None

    finished = [m.finished_time for m in metrics if m.finished_time is not None]
    return RequestMetrics(
        arrival_time=min(m.arrival_time for m in metrics),
        first_scheduled_time=earliest("first_scheduled_time"),
        first_token_time=earliest("first_token_time"),
        finished_time=max(finished) if finished else None,
        num_preemptions=sum(m.num_preemptions for m in metrics),
    )


class SampleFanOut:
    """Prompts of one call and their samples: which prompt an engine request (by arrival index) belongs
    to, and the outputs of prompts whose samples have not all finished yet.

    Samples of a prompt get consecutive arrival indices, so one int64 per prompt (its first sample) maps
    both ways; a call whose prompts all have n=1 has sample index == prompt index.
    """

    def __init__(self) -> None:
        self._first_sample = array("q")  # arrival index of each prompt's first sample
        self._num_samples = 0
        self._pending: dict[int, list[Optional[RequestOutput]]] = {}  # prompt -> its finished samples so far

    @property
    def num_prompts(self) -> int:
        return len(self._first_sample)

    @property
    def num_samples(self) -> int:
        return self._num_samples

    def add_prompt(self, n: int) -> int:
        """Register a prompt of ``n`` samples; the arrival index of its first sample."""
        first = self._num_samples
        self._first_sample.append(first)
        self._num_samples += n
        return first

    def _locate(self, arrival_index: int) -> tuple[int, int, int]:
        """(prompt, sample index, n) of the engine request with this arrival index."""
        prompt = bisect.bisect_right(self._first_sample, arrival_index) - 1
        first = self._first_sample[prompt]
        end = self._first_sample[prompt + 1] if prompt + 1 < len(self._first_sample) else self._num_samples
        return prompt, arrival_index - first, end - first

    def finished(
        self, arrival_index: int, request_id: str, output: RequestOutput
    ) -> Optional[tuple[int, RequestOutput]]:
        """Record a finished sample; (prompt index, the prompt's output) once its last sample is in, else None."""
        prompt, index, n = self._locate(arrival_index)
        if n == 1:
            return prompt, output
        samples = self._pending.setdefault(prompt, [None] * n)
        samples[index] = output
        if any(s is None for s in samples):
            return None
        del self._pending[prompt]
        parent_id = request_id.split("_", 1)[1]  # sample_request_id's form
        return prompt, merge_samples(parent_id, samples)  # type: ignore[arg-type]
