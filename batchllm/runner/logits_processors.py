"""vLLM/OpenAI logits processing over a batch: logit_bias, allowed_token_ids, single-token bad words,
repetition / frequency / presence penalties, min_p, and the top-k logprobs returned with each token.

Order (vLLM's): the static mask (logit_bias, allowed_token_ids, bad words), then the penalties (repetition,
frequency, presence), then (in the sampler) temperature, min_p, top-k / top-p. Greedy rows get the static mask
and the penalties before their argmax too. Returned logprobs are the log_softmax of the logits after the
static mask and penalties (and min_tokens bans, structured-output masks) but before temperature, min_p and
top-k / top-p: the "processed" distribution of the model, the same for greedy and sampled rows.

Where the state lives, and why: penalties need per-request token counts. They live on the device, one row of
a pooled tensor per request (a *slot*), and the sampler adds each chosen token to its row right after
sampling (``ProcessedBatch.finish``, a scatter on the device). The host is never asked: with overlap
scheduling a request's newest token may still be PENDING_TOKEN on the host when the next iteration samples,
but it was counted on the device the moment it was chosen. A slot is filled once from the host (the prompt,
for the repetition penalty) at the request's first sample, when it has no output tokens yet; preemption
(swap or recompute) keeps the output tokens and so keeps the slot. Rebuilding counts from the host lists each
step (vLLM v0) would cost O(output length) host work and a copy per penalized row per step instead.
Memory: each pool is [slots, vocab] (int32 counts, bool prompt tokens, float32 static mask, each made only
once some request needs it), doubled when full after reusing the slots of finished requests; it is not part
of the KV-cache budget (a few hundred KB per penalized request at a 150k vocabulary).

Fast path: a batch in which no row uses any of this costs one cheap test per row and no tensor work
(``LogitsProcessors.apply`` returns None).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from batchllm.core.request import PENDING_TOKEN, Request
from batchllm.host_to_device import to_device
from batchllm.sampling_params import MIN_SAMPLED_TEMPERATURE, SamplingParams


def has_penalties(params: SamplingParams) -> bool:
    return params.presence_penalty != 0 or params.frequency_penalty != 0 or params.repetition_penalty != 1.0


def has_static_mask(params: SamplingParams) -> bool:
    return bool(params.logit_bias) or params.allowed_token_ids is not None or bool(params.bad_words)


def needs_processing(params: SamplingParams) -> bool:
    """Does this row need anything of this module (the fast path's one test per row)? Written out rather
    than through has_penalties / has_static_mask: it runs for every row of every step."""
    return (params.logprobs is not None or params.min_p > 0 or params.presence_penalty != 0
            or params.frequency_penalty != 0 or params.repetition_penalty != 1.0 or bool(params.logit_bias)
            or params.allowed_token_ids is not None or bool(params.bad_words))


# ---------------------------------------------------------------------------------- the processors themselves


def apply_repetition_penalty(logits: torch.Tensor, penalty: torch.Tensor, seen: torch.Tensor) -> torch.Tensor:
    """transformers' RepetitionPenaltyLogitsProcessor per row: a token seen in the prompt or the output has
    its logit divided by the penalty when positive, multiplied when negative. penalty [rows], seen [rows, V]."""
    p = penalty.unsqueeze(1)
    return torch.where(seen, torch.where(logits > 0, logits / p, logits * p), logits)


def apply_frequency_presence(
    logits: torch.Tensor, counts: torch.Tensor, frequency: torch.Tensor, presence: torch.Tensor
) -> torch.Tensor:
    """OpenAI's formula over output tokens: logits - frequency * count - presence * (count > 0)."""
    counts = counts.to(logits.dtype)
    return logits - frequency.unsqueeze(1) * counts - presence.unsqueeze(1) * (counts > 0).to(logits.dtype)


def apply_min_p(logits: torch.Tensor, min_p: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
    """Drop (to -inf) tokens whose probability at `temperature` is below min_p x the top probability.

    p_i / p_max = exp((l_i - l_max) / T), so the test is l_i < l_max + T * log(min_p) on the unscaled logits:
    the same tokens as transformers' MinPLogitsWarper after temperature, without dividing here (which lets
    it run before the sampler's temperature step, in one place). min_p = 0 keeps everything.
    """
    log_min_p = torch.log(min_p.clamp(min=0.0))  # -inf for 0: nothing dropped
    threshold = logits.amax(dim=-1) + temperature * log_min_p
    return logits.masked_fill(logits < threshold.unsqueeze(1), float("-inf"))


def static_bias_row(params: SamplingParams, vocab: int) -> torch.Tensor:
    """logit_bias, allowed_token_ids and bad words of one request as one additive row (host, float32):
    the bias values, -inf for tokens outside allowed_token_ids and for banned words."""
    row = torch.zeros(vocab, dtype=torch.float32)
    if params.logit_bias:
        ids = torch.tensor([int(t) for t in params.logit_bias], dtype=torch.int64)
        row[ids] = torch.tensor([float(v) for v in params.logit_bias.values()], dtype=torch.float32)
    if params.allowed_token_ids is not None:
        allowed = torch.zeros(vocab, dtype=torch.bool)
        allowed[torch.tensor(list(params.allowed_token_ids), dtype=torch.int64)] = True
        row.masked_fill_(~allowed, float("-inf"))
    banned = params.bad_words_token_ids
    if banned:
        row[torch.tensor(banned, dtype=torch.int64)] = float("-inf")
    return row


@dataclass
class SampledLogprobs:
    """Log-probabilities of one iteration's rows, on the device (copied to the host with the tokens)."""

    chosen: torch.Tensor  # [rows] float32: each row's chosen token
    top_ids: Optional[torch.Tensor] = None  # [rows, k] int64, k = the batch's largest `logprobs`; best first
    top_logprobs: Optional[torch.Tensor] = None  # [rows, k] float32, sorted descending


class ProcessedBatch:
    """What `LogitsProcessors.apply` did to one batch; `finish` runs once the tokens are chosen."""

    def __init__(self, owner: "LogitsProcessors", logprobs_all: Optional[torch.Tensor], top_k: int,
                 counted_rows: Optional[torch.Tensor], counted_slots: Optional[torch.Tensor]) -> None:
        self.owner = owner
        self.logprobs_all = logprobs_all
        self.top_k = top_k
        self.counted_rows = counted_rows
        self.counted_slots = counted_slots

    def finish(self, chosen: torch.Tensor) -> Optional[SampledLogprobs]:
        """Count the chosen tokens of penalized rows (on the device), and gather the logprobs to return."""
        counts = self.owner.output_counts
        if self.counted_rows is not None and counts is not None:
            tokens = chosen[self.counted_rows]
            counts.index_put_((self.counted_slots, tokens), torch.ones_like(tokens, dtype=counts.dtype),
                              accumulate=True)
        if self.logprobs_all is None:
            return None
        out = SampledLogprobs(self.logprobs_all.gather(1, chosen.unsqueeze(1)).squeeze(1))
        if self.top_k > 0:
            out.top_logprobs, out.top_ids = self.logprobs_all.topk(self.top_k, dim=-1)  # sorted, best first
        return out


class LogitsProcessors:
    """The device state of penalized / biased requests (one slot each) and the batched application."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.reset()

    def reset(self) -> None:
        """Forget every request's state (between batches, or after an aborted one)."""
        self._slots: dict[Request, int] = {}  # Request hashes by identity; the dict keeps it alive meanwhile
        self._free: list[int] = []
        self.capacity = 0
        self.vocab = 0
        # [capacity, V] pools, each made when the first request needing it gets a slot
        self.output_counts: Optional[torch.Tensor] = None  # int32: output tokens so far (penalties)
        self.prompt_seen: Optional[torch.Tensor] = None  # bool: in the prompt (repetition penalty)
        self.static_bias: Optional[torch.Tensor] = None  # float32: logit_bias / allowed / bad words

    @property
    def num_slots_in_use(self) -> int:
        return len(self._slots)

    def apply(self, logits: torch.Tensor, requests: list[Request]) -> Optional[ProcessedBatch]:
        """Bias, mask and penalize `logits` in place, take the logprobs to return, then apply min_p.

        None (the fast path) when no row uses any of it: nothing was done and no state was made.
        """
        rows = [i for i, r in enumerate(requests) if needs_processing(r.params)]
        if not rows:
            return None
        device = logits.device
        stateful = [i for i in rows if has_penalties(requests[i].params) or has_static_mask(requests[i].params)]
        counted_rows = counted_slots = None
        if stateful:
            slots = [self._slot_of(requests[i], logits.shape[-1]) for i in stateful]
            counted_rows = to_device(stateful, torch.int64, device)
            counted_slots = to_device(slots, torch.int64, device)
            logits[counted_rows] = self._penalized(logits[counted_rows], [requests[i].params for i in stateful],
                                                   counted_slots)
        top_k = max((requests[i].params.logprobs or 0 for i in rows), default=0)
        want_logprobs = any(requests[i].params.logprobs is not None for i in rows)
        logprobs_all = logits.log_softmax(dim=-1) if want_logprobs else None
        min_p_rows = [i for i in rows if requests[i].params.min_p > 0 and not requests[i].params.greedy]
        if min_p_rows:
            params = [requests[i].params for i in min_p_rows]
            index = to_device(min_p_rows, torch.int64, device)
            logits[index] = apply_min_p(
                logits[index], to_device([p.min_p for p in params], logits.dtype, device),
                # the temperature the sampler will divide by (clamped the same way)
                to_device([max(p.temperature, MIN_SAMPLED_TEMPERATURE) for p in params], logits.dtype, device),
            )
        return ProcessedBatch(self, logprobs_all, top_k, counted_rows, counted_slots)

    def _penalized(self, logits: torch.Tensor, params: list[SamplingParams], slots: torch.Tensor) -> torch.Tensor:
        """The static mask, then repetition, frequency and presence penalties, of these rows (vLLM's order)."""
        device = logits.device
        if self.static_bias is not None and any(has_static_mask(p) for p in params):
            logits = logits + self.static_bias[slots].to(logits.dtype)
        if self.output_counts is None or not any(has_penalties(p) for p in params):
            return logits
        counts = self.output_counts[slots]
        if self.prompt_seen is not None and any(p.repetition_penalty != 1.0 for p in params):
            seen = self.prompt_seen[slots] | (counts > 0)
            penalty = to_device([p.repetition_penalty for p in params], logits.dtype, device)
            logits = apply_repetition_penalty(logits, penalty, seen)
        if any(p.frequency_penalty != 0 or p.presence_penalty != 0 for p in params):
            logits = apply_frequency_presence(
                logits, counts, to_device([p.frequency_penalty for p in params], logits.dtype, device),
                to_device([p.presence_penalty for p in params], logits.dtype, device),
            )
        return logits

    # ---- slots ---------------------------------------------------------------------------------------------
    def _slot_of(self, request: Request, vocab: int) -> int:
        slot = self._slots.get(request)
        if slot is None:
            slot = self._new_slot(request, vocab)
        return slot

    def _new_slot(self, request: Request, vocab: int) -> int:
        """A slot filled from the host: the prompt (repetition penalty) and the static mask row."""
        outputs = request.output_token_ids
        # A slot is made at the request's first sample and kept until it finishes, so its only possible
        # PENDING_TOKEN here is the placeholder of the token being sampled now (the scheduler may record the
        # launch before the sampler runs), which `finish` counts. An earlier one could not be counted here.
        if outputs.count(PENDING_TOKEN) > 1:
            raise RuntimeError(f"request {request.request_id}: penalty state made after a token was in flight "
                               "(a bug: please report)")
        outputs = [t for t in outputs if t != PENDING_TOKEN]
        params = request.params
        if vocab != self.vocab:
            self.reset()  # another model width (never within one engine): start the pools over
            self.vocab = vocab
        if not self._free:
            self._grow()
        slot = self._free.pop()
        self._slots[request] = slot
        penalties = has_penalties(params)
        if penalties and self.output_counts is None:
            self.output_counts = torch.zeros(self.capacity, vocab, dtype=torch.int32, device=self.device)
        if params.repetition_penalty != 1.0 and self.prompt_seen is None:
            self.prompt_seen = torch.zeros(self.capacity, vocab, dtype=torch.bool, device=self.device)
        if has_static_mask(params) and self.static_bias is None:
            self.static_bias = torch.zeros(self.capacity, vocab, dtype=torch.float32, device=self.device)
        # Every pool's row describes this request from here on (a reused slot holds its last owner's values).
        if self.output_counts is not None:
            self.output_counts[slot].zero_()
            if outputs:
                ids = to_device(outputs, torch.int64, self.device)
                self.output_counts[slot].index_put_((ids,), torch.ones_like(ids, dtype=torch.int32), accumulate=True)
        if self.prompt_seen is not None:
            self.prompt_seen[slot].zero_()
            self.prompt_seen[slot, to_device(request.prompt_token_ids, torch.int64, self.device)] = True
        if self.static_bias is not None:
            if has_static_mask(params):
                self.static_bias[slot] = static_bias_row(params, vocab).to(self.device, non_blocking=True)
            else:
                self.static_bias[slot].zero_()
        return slot

    def _grow(self) -> None:
        """Free the slots of finished requests; if none, double the pools."""
        for request in [r for r in self._slots if r.is_finished]:
            self._free.append(self._slots.pop(request))
        if self._free:
            return
        old, self.capacity = self.capacity, max(8, 2 * self.capacity)
        self._free = list(range(self.capacity - 1, old - 1, -1))  # lowest first out of pop()
        for name in ("output_counts", "prompt_seen", "static_bias"):
            pool = getattr(self, name)
            if pool is not None:
                grown = torch.zeros((self.capacity, pool.shape[1]), dtype=pool.dtype, device=pool.device)
                grown[:old] = pool
                setattr(self, name, grown)
