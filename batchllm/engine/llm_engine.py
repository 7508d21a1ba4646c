"""The step loop: schedule, run the model, append tokens, finish requests, assemble outputs."""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Optional

import torch
from transformers import PreTrainedTokenizerBase

from batchllm.config import EngineConfig, SchedulerConfig
from batchllm.core.plan import SchedulerOutput
from batchllm.core.request import Request, RequestStatus
from batchllm.engine.stop_checker import StopChecker
from batchllm.engine.structured_outputs import StructuredOutputs, needs_mask
from batchllm.engine.trace import IterationTrace
from batchllm.kv_cache.block_pool import BlockPool
from batchllm.model.arch_config import ArchConfig
from batchllm.outputs import CompletionOutput, RequestOutput
from batchllm.runner.model_runner import LaunchedForward, ModelRunner
from batchllm.runner.sampled_tokens import SampledTokens
from batchllm.sampling_params import SamplingParams
from batchllm.structured.bitmasks import ACCEPTED, REJECTED, PendingBitmask
from batchllm.scheduler.interface import Scheduler
from batchllm.scheduler.scheduler import BatchScheduler

logger = logging.getLogger(__name__)


class LLMEngine:
    def __init__(
        self,
        config: EngineConfig,
        arch: ArchConfig,
        tokenizer: Optional[PreTrainedTokenizerBase],
        attention_backend: str,
    ) -> None:
        self.config = config
        self.arch = arch
        self.tokenizer = tokenizer
        eos = list(arch.eos_token_ids)
        if tokenizer is not None and tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in eos:
            eos.append(tokenizer.eos_token_id)
        self.eos_token_ids = eos
        self.runner = ModelRunner(config, arch, eos, attention_backend)
        self.stop_checker = StopChecker(tokenizer, eos, config.max_model_len)
        self.structured = StructuredOutputs(tokenizer, arch.vocab_size)
        self._received_early: list[Request] = []  # finished while a step waited for tokens its masks need
        self._start_policy(config.scheduler)

    def reconfigure(
        self,
        scheduler_config: SchedulerConfig,
        attention_backend: Optional[str] = None,
        overlap_scheduling: Optional[bool] = None,
    ) -> None:
        """Fresh scheduler, block pool and trace under another policy (the loaded model and KV memory stay).

        Lets benchmarks and ablations compare policies in one process without reloading the model.
        """
        if self.has_unfinished():
            raise RuntimeError("reconfigure only between batches: requests are still running")
        if attention_backend is not None:
            self.runner.set_attention_backend(attention_backend)
        if overlap_scheduling is not None:
            self.config = dataclasses.replace(self.config, overlap_scheduling=overlap_scheduling)
        self._start_policy(scheduler_config)

    def _start_policy(self, scheduler_config: SchedulerConfig) -> None:
        self.config = dataclasses.replace(self.config, scheduler=scheduler_config)
        if scheduler_config.prefix_clustering and scheduler_config.multi_level:
            self.runner.prepare_multi_level_graphs()
        self._new_scheduler(scheduler_config)
        self.num_iterations = 0
        self.trace = IterationTrace()

    def _new_scheduler(self, scheduler_config: SchedulerConfig) -> None:
        """An empty scheduler over whole block pools; nothing in flight."""
        self.pool = BlockPool(self.runner.num_blocks, enable_caching=scheduler_config.prefix_caching)
        host_pool = BlockPool(self.runner.num_host_blocks) if self.runner.num_host_blocks else None
        self.scheduler: Scheduler = BatchScheduler(
            scheduler_config, self.pool, self.config.cache.block_size, host_pool, self.runner.preemption_costs()
        )
        self._in_flight: Optional[SampledTokens] = None  # launched iteration whose tokens are not read yet
        # A launched forward whose sampler waits for its token masks (filled beside the next schedule()).
        self._awaiting_masks: Optional[tuple[LaunchedForward, Optional[PendingBitmask]]] = None

    def abort_all(self) -> None:
        """Drop every request (waiting, running, in flight) and free all KV memory; model, trace and counters stay.

        For a call that failed or was interrupted midway, so that the next batch inherits none of its
        requests or blocks. A fresh scheduler and pool are whole by construction, where releasing each
        request's and each prefix group's holds one by one would be only as correct as that bookkeeping,
        which the failure may have left half-done. Cached prefix blocks (vllm-like) are forgotten too.
        """
        if self._awaiting_masks is not None and self._awaiting_masks[1] is not None:
            self._awaiting_masks[1].wait()  # its matchers belong to requests dropped here
        self._in_flight, self._awaiting_masks = None, None
        self._received_early = []
        self.runner.sampler.logits_processors.reset()  # its slots hold the dropped requests
        counters = self.scheduler.counters
        try:
            if self.config.device.type == "cuda":
                # Launched kernels may still write KV blocks (and pinned token buffers) that the next
                # batch gets: let them end first.
                torch.cuda.synchronize(self.config.device)
        finally:
            self._new_scheduler(self.config.scheduler)
            self.scheduler.counters = counters

    def make_request(
        self, request_id: str, prompt: Optional[str], prompt_token_ids: list[int], params: SamplingParams, arrival_index: int
    ) -> Request:
        max_output = params.output_budget(len(prompt_token_ids), self.config.max_model_len)
        if params.bad_words:  # LLM's validation did it already; here for requests that skipped it
            problems = params.update_from_tokenizer(self.tokenizer)
            if problems:
                raise ValueError(f"request {request_id}: " + "; ".join(problems))
        request = Request(request_id, prompt, prompt_token_ids, params, max_output, arrival_index)
        self.structured.attach(request)
        return request

    def add_requests(self, requests: list[Request]) -> None:
        """Queue a whole batch; the scheduler analyses its prefixes and orders it globally."""
        self.scheduler.add_requests(requests)

    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished() or self._in_flight is not None or self._awaiting_masks is not None

    def num_waiting(self) -> int:
        """Requests given but not admitted yet (waiting or parked by the scheduler)."""
        return self.scheduler.num_waiting

    def step(self) -> list[Request]:
        """One iteration; returns the requests that finished in it.

        With overlap_scheduling, the iteration launched here runs on the GPU while the host reads the
        previous iteration's tokens, checks stops and (next call) schedules: tokens a request has not
        received yet are PENDING_TOKEN, and its next input is taken on the device. A request that stops
        on a sampled token has spent one extra iteration, which is dropped; length limits are known ahead.
        """
        plan = self.scheduler.schedule()
        if self._awaiting_masks is not None:
            # The masks were filled while schedule() ran; this forward's sampler goes before the next one.
            forward, pending = self._awaiting_masks
            self._awaiting_masks = None
            self._in_flight = self.runner.sample(forward, pending.result() if pending is not None else None)
        launched = self._launch(plan) if plan.chunks else None
        if not plan.chunks:
            # Nothing to run: every running request waits for its in-flight token, some perhaps preempted
            # to make room (their KV still has to go to host memory).
            self.runner.swap_blocks(plan)
            self.scheduler.on_step_done(plan)
            if self._in_flight is None:
                if self.scheduler.has_unfinished():
                    raise RuntimeError("scheduler made no progress with requests left (a bug: please report)")
                return []
        if self.config.overlap_scheduling:
            previous, self._in_flight = self._in_flight, launched
        else:
            previous = launched
        finished, self._received_early = self._received_early, []
        if previous is not None:
            finished += self._receive(previous)
        if plan.chunks:
            # After _receive: the blocks it hashes must not hold pending tokens of the previous iteration.
            self.scheduler.on_step_done(plan)
        return finished

    def _launch(self, plan: SchedulerOutput) -> Optional[SampledTokens]:
        """Queue the plan's forward pass and its sampler; with token masks under overlap scheduling, the
        sampler waits for the next step (None here), so that the masks fill while it schedules."""
        now = time.monotonic()
        for chunk in plan.chunks:
            if chunk.request.metrics.first_scheduled_time is None:
                chunk.request.metrics.first_scheduled_time = now
        forward = self.runner.forward(plan, self._in_flight)
        self.num_iterations += 1
        # The trace splits work by prompt vs output tokens (what the prefill/decode reports count), which
        # is not the scheduler's "one-token step": a one-token prompt tail is prompt work. Read before the
        # scheduler records the launch.
        decode_tokens = plan.num_tokens_past_prompt
        self.scheduler.on_launched(plan, forward.chunks, forward.token_positions)  # the sampled tokens keep them
        self.trace.record(
            batch_tokens=plan.num_tokens,
            prefill_tokens=plan.num_tokens - decode_tokens,
            decode_tokens=decode_tokens,
            running=len(plan.chunks),
            kv_blocks_used=self.pool.num_used,
            kv_blocks_shared=self.pool.num_shared,
            preemptions=len(plan.preempted),
        )
        bitmask = None
        if needs_mask(forward.chunks):
            if self.config.overlap_scheduling:
                # A constrained request's mask needs its previous token: read that iteration now, while the
                # GPU runs this forward pass; the fill runs in a worker thread beside the next schedule(),
                # and the sampler is queued after it. Filling inline and sampling here cost 6.1 s of 31.1 s
                # at 2048 requests on one H200 (2026-12-02): the next schedule waited behind the fill.
                if self._in_flight is not None:
                    self._received_early += self._receive(self._in_flight)
                    self._in_flight = None
                self._awaiting_masks = (forward, self.structured.start_step_mask(forward.chunks, self.config.device))
                return None
            bitmask = self.structured.step_mask(forward.chunks, self.config.device)
        return self.runner.sample(forward, bitmask)

    def _receive(self, sampled: SampledTokens) -> list[Request]:
        """Put an iteration's tokens in place of its PENDING_TOKENs; finish the requests that stop on them."""
        tokens, logprobs = sampled.to_host()
        top = sampled.top_logprobs_to_host()  # (ids, logprobs) [rows][k], or None: no row asked for k >= 1
        constraint = self._accept_constrained(sampled.chunks, tokens)
        finished = []
        now = time.monotonic()
        for i, (chunk, at, token) in enumerate(zip(sampled.chunks, sampled.token_positions, tokens)):
            request = chunk.request
            if request.is_finished:
                continue  # it stopped on the token before; this one was computed in vain
            token_ids = request.token_ids
            if request.error is not None:
                # The sampler could not draw this request's token (request.error says why): the token is
                # not part of its output, and it ends here.
                del token_ids[at:]
                stop = True
            else:
                token_ids[at] = token
                newer = token_ids[at + 1 :]  # the PENDING_TOKEN of the iteration just launched, if it has one
                del token_ids[at + 1 :]  # the stop check looks at the newest token
                if logprobs is not None and request.params.logprobs is not None:
                    request.output_logprobs.append(logprobs[i])
                    k = request.params.logprobs
                    if k and top is not None:  # the batch's k is the largest asked: keep this request's k
                        request.output_top_logprobs.append(dict(zip(top[0][i][:k], top[1][i][:k])))
                if request.metrics.first_token_time is None:
                    request.metrics.first_token_time = now
                stop = self._check_stop(request)
                state = constraint.get(i, ACCEPTED)
                if state == REJECTED:
                    request.error = self.structured.rejection(token)
                if state != ACCEPTED and not stop:
                    # The constraint is complete (with ignore_eos too: nothing more would be accepted).
                    request.finish_reason, stop = "stop", True
            if stop:
                if request.error is not None:
                    self._mark_failed(request)
                request.status = RequestStatus.FINISHED
                request.metrics.finished_time = now
                # The normal finish path: a request that failed frees its blocks like one that stopped.
                self.scheduler.finish_request(request)
                finished.append(request)
            else:
                token_ids.extend(newer)
        return finished

    def _accept_constrained(self, chunks: list, tokens: list[int]) -> dict[int, int]:
        """Each constrained row's matcher takes its token (rows side by side in threads): row -> state."""
        rows = [i for i, chunk in enumerate(chunks) if chunk.request.grammar is not None
                and not chunk.request.is_finished and chunk.request.error is None]
        if not rows:
            return {}
        states = self.structured.accept([chunks[i].request for i in rows], [tokens[i] for i in rows])
        return dict(zip(rows, states))

    def _check_stop(self, request: Request) -> bool:
        """The stop check (it detokenizes for stop strings), confined to this request: if it raises, the
        request stops with `request.error` set, and the rest of the batch goes on."""
        try:
            return self.stop_checker.check(request)
        except Exception as err:  # tokenizers raise all kinds; any of them concerns this request only
            request.error = f"checking stop conditions failed: {type(err).__name__}: {err}"
            logger.error("request %s: %s", request.request_id, request.error, exc_info=True)
            return True

    @staticmethod
    def _mark_failed(request: Request) -> None:
        request.finish_reason, request.stop_reason = "error", None
        request.output_text = None  # a stop string the failed check may have found does not count

    def make_output(self, request: Request) -> RequestOutput:
        text = request.output_text
        if text is None:
            try:
                text = self.stop_checker.decode(request)
            except Exception as err:  # the output is still worth returning, as an error of this request
                text = ""
                if request.error is None:
                    request.error = f"decoding the output failed: {type(err).__name__}: {err}"
                    logger.error("request %s: %s", request.request_id, request.error, exc_info=True)
                    self._mark_failed(request)
        wants_logprobs = request.params.logprobs is not None
        completion = CompletionOutput(
            index=0,
            text=text,
            token_ids=request.output_token_ids,
            cumulative_logprob=sum(request.output_logprobs) if wants_logprobs else None,
            logprobs=list(request.output_logprobs) if wants_logprobs else None,
            top_logprobs=list(request.output_top_logprobs) if request.params.logprobs else None,
            finish_reason=request.finish_reason,
            stop_reason=request.stop_reason,
        )
        return RequestOutput(
            request_id=request.request_id,
            prompt=request.prompt,
            prompt_token_ids=request.prompt_token_ids,
            outputs=[completion],
            finished=request.is_finished,
            metrics=request.metrics,
            error=request.error,
        )
