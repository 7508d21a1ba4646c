"""Next-token choice for a batch of rows: greedy, temperature, top-k, top-p, per-request seeds."""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from batchllm.core.request import Request
from batchllm.host_to_device import to_device
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


class Sampler:
    def __init__(self, eos_token_ids: Sequence[int], seed: int, device: torch.device) -> None:
        self.eos_token_ids = list(eos_token_ids)
        self.device = device
        self.generator = torch.Generator(device=device).manual_seed(seed)  # for requests without a seed
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

        chosen = logits.argmax(dim=-1)
        random_rows = [i for i, r in enumerate(requests) if not r.params.greedy]
        if random_rows:
            rows = to_device(random_rows, torch.int64, logits.device)
            params = [requests[i].params for i in random_rows]
            # Clamped where we divide: a tiny temperature would make the scaled logits inf and the softmax NaN.
            temperatures = [max(p.temperature, MIN_SAMPLED_TEMPERATURE) for p in params]
            temps = to_device(temperatures, logits.dtype, logits.device)
            scaled = logits[rows] / temps.unsqueeze(1)
            if any(p.top_k > 0 or p.top_p < 1.0 for p in params):
                top_k = to_device([p.top_k for p in params], torch.int64, logits.device)
                top_p = to_device([p.top_p for p in params], logits.dtype, logits.device)
                scaled = apply_top_k_top_p(scaled, top_k, top_p)
            probs = scaled.softmax(dim=-1)
            # Exponential race (argmax p/E, E~Exp(1)) samples from p; one draw per row keeps seeded rows
            # independent of what else is in the batch.
            noise = torch.empty_like(probs)
            for j, row in enumerate(random_rows):
                generator = self._generator_for(requests[row])
                if generator is None:
                    noise[j].fill_(1.0)  # its token is dropped; drawing from the shared stream would shift others'
                else:
                    noise[j].exponential_(generator=generator)
            chosen[rows] = (probs / noise).argmax(dim=-1)
        return chosen, processed.finish(chosen) if processed is not None else None

    def _generator_for(self, request: Request) -> Optional[torch.Generator]:
        """The request's random stream; None if it cannot be made, with `request.error` set.

        A failure here concerns this request alone (e.g. a seed that slipped past validation): its row
        gets a placeholder token, and the engine finishes it with finish_reason "error" when that token
        arrives (dropping it), so the rest of the batch goes on.
        """
        if request.params.seed is None:
            return self.generator
        if request.generator is None:
            try:
                request.generator = torch.Generator(device=self.device).manual_seed(request.params.seed)
            except Exception as err:  # torch raises ValueError/RuntimeError/TypeError depending on the value
                if request.error is None:
                    request.error = (f"seed={request.params.seed!r}: could not seed the sampler "
                                     f"({type(err).__name__}: {err})")
                return None
        return request.generator
