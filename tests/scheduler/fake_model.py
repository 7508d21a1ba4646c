"""Drive a scheduler without a model: every sampled token is 7, requests finish at max tokens."""

from __future__ import annotations

from batchllm.core.request import Request, RequestStatus
from batchllm.sampling_params import SamplingParams


def make_request(i: int, prompt: list[int], max_tokens: int = 4, priority: int = 0, hint=None) -> Request:
    params = SamplingParams(max_tokens=max_tokens, priority=priority, decode_length_hint=hint)
    return Request(str(i), None, prompt, params, max_tokens, i)


def run_step(scheduler, out, finished: list[Request]) -> None:
    sampled = [chunk for chunk in out.chunks if chunk.completes_sequence]
    positions: list[int] = []
    scheduler.on_launched(out, sampled, positions)  # the scheduler advances progress, as in the engine
    scheduler.on_step_done(out)
    for chunk, at in zip(sampled, positions):
        request = chunk.request
        request.token_ids[at] = 7
        if request.num_output_tokens >= request.max_output_tokens:
            request.status = RequestStatus.FINISHED
            scheduler.finish_request(request)
            finished.append(request)
