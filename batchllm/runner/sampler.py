"""Next-token choice for a batch of rows: greedy, temperature, top-k, top-p, per-request seeds."""

from __future__ import annotations

import random
from typing import Optional, Sequence

import torch

from batchllm.core.request import Request
from batchllm.host_to_device import to_device
from batchllm.runner.gumbel_sampling import gumbel_argmax_reference, split_seed
from batchllm.runner.logits_processors import LogitsProcessors, SampledLogprobs
from batchllm.sampling_params import MIN_SAMPLED_TEMPERATURE
from batchllm.structured.bitmasks import StepBitmask, apply_bitmask


def apply_top_k_top_p(logits: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Mask (to -inf) tokens outside each row's top-k / nucleus; top_k 0 and top_p 1 disable them."""
    sorted_logits, sorted_idx = logits.sort(dim=-1, descending=True)
    vocab = logits.shape[-1]
    ranks = torch.arange(vocab, device=logits.device).expand_as(sorted_logits)
    k = torch.where(top_k > 0, top_k, vocab).unsqueeze(1)
    remove = ranks >= k
    probs = sorted_logits.masked_fill(remove, float("-inf")).softmax(dim=-1)
    # drop a token when the mass before it already reaches top_p (the first token always stays)
    mass_before = probs.cumsum(dim=-1) - probs
    remove |= mass_before >= top_p.unsqueeze(1)
    remove[:, 0] = False
    sorted_logits = sorted_logits.masked_fill(remove, float("-inf"))
    return torch.empty_like(logits).scatter_(1, sorted_idx, sorted_logits)


def gumbel_argmax(logits: torch.Tensor, inv_temperature: torch.Tensor, seed_lo: torch.Tensor, seed_hi: torch.Tensor,
                  step: torch.Tensor) -> torch.Tensor:
    """One sampled token per row (``gumbel_sampling``): the Triton kernel on a GPU, the reference elsewhere."""
    if logits.device.type != "cuda":
        return gumbel_argmax_reference(logits, inv_temperature, seed_lo, seed_hi, step)
    from batchllm.runner.gumbel_kernel import gumbel_argmax_triton

    return gumbel_argmax_triton(logits, inv_temperature, seed_lo, seed_hi, step)


class Sampler:
    def __init__(self, eos_token_ids: Sequence[int], seed: int, device: torch.device) -> None:
        self.eos_token_ids = list(eos_token_ids)
        self.device = device
        self.unseeded = random.Random(seed)  # the seeds of requests without one
        self.logits_processors = LogitsProcessors(device)  # penalties, biases, min_p, logprobs (and their state)

    def _banned_until_min_tokens(self, request: Request) -> list[int]:
        min_tokens = request.params.min_tokens
        # The scheduler has already given this row's token its PENDING_TOKEN place (the launch is recorded
        # before sampling): the tokens before it are one fewer than num_output_tokens.
        if not min_tokens or request.num_output_tokens - 1 >= min_tokens:
            return []
        banned = list(request.params.stop_token_ids)
        if not request.params.ignore_eos:
            banned += self.eos_token_ids
        return banned

    def sample(self, logits: torch.Tensor, requests: list[Request], bitmask: Optional[StepBitmask] = None
               ) -> tuple[torch.Tensor, Optional[SampledLogprobs]]:
        """Chosen token per row, and the chosen tokens' log-probabilities if any request asked, both on the
        logits' device (the engine copies them to the host while the next iteration is being prepared).
        ``bitmask``: the structured-output rows' allowed tokens, applied before anything else."""
        if bitmask is not None:
            apply_bitmask(logits, bitmask)
        for row, request in enumerate(requests):
            banned = self._banned_until_min_tokens(request)
            if banned:
                logits[row, banned] = float("-inf")
        # Biases, penalties and min_p in place, and the logprobs to return; None when no row uses any.
        processed = self.logits_processors.apply(logits, requests)

        random_rows = [i for i, r in enumerate(requests) if not r.params.greedy]
        everyone = len(random_rows) == len(requests)
        # The greedy rows' argmax: skipped when every row samples (a full pass over [rows, vocab]).
        chosen = None if everyone and random_rows else logits.argmax(dim=-1)
        if random_rows:
            rows = None if everyone else to_device(random_rows, torch.int64, logits.device)
            params = [requests[i].params for i in random_rows]
            # Clamped where we divide: a tiny temperature would make the scaled logits inf.
            temperatures = [max(p.temperature, MIN_SAMPLED_TEMPERATURE) for p in params]
            picked = logits if everyone else logits[rows]
            if any(p.top_k > 0 or p.top_p < 1.0 for p in params):
                temps = to_device(temperatures, logits.dtype, logits.device)
                top_k = to_device([p.top_k for p in params], torch.int64, logits.device)
                top_p = to_device([p.top_p for p in params], logits.dtype, logits.device)
                picked = apply_top_k_top_p(picked / temps.unsqueeze(1), top_k, top_p)
                temperatures = [1.0] * len(params)
            seeds = [self._seed_of(requests[i]) for i in random_rows]
            drawn = gumbel_argmax(
                picked,
                to_device([1.0 / t for t in temperatures], torch.float32, logits.device),
                to_device([lo for lo, _, _ in seeds], torch.int64, logits.device),
                to_device([hi for _, hi, _ in seeds], torch.int64, logits.device),
                to_device([step for _, _, step in seeds], torch.int64, logits.device),
            )
            if everyone:
                chosen = drawn
            else:
                chosen[rows] = drawn
        return chosen, processed.finish(chosen) if processed is not None else None

    def _seed_of(self, request: Request) -> tuple[int, int, int]:
        """The row's noise key (seed low and high 32 bits, draw index). A seeded request's key is its seed
        and the index of the output token it draws: the same tokens in any batch, after preemption too.
        Without a seed, a fresh seed from the sampler's stream."""
        if request.params.seed is None:
            lo, hi = split_seed(self.unseeded.getrandbits(64))
            return lo, hi, 0
        lo, hi = split_seed(request.params.seed)
        # The launch is recorded before sampling: the tokens before this row's are one fewer.
        return lo, hi, (request.num_output_tokens - 1) & 0xFFFFFFFF
