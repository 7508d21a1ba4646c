"""Decide after each new token whether a request is done, and why."""

from __future__ import annotations

from typing import Sequence

from transformers import PreTrainedTokenizerBase

from batchllm.core.request import Request


class StopChecker:
    def __init__(self, tokenizer: PreTrainedTokenizerBase | None, eos_token_ids: Sequence[int], max_model_len: int) -> None:
        self.tokenizer = tokenizer
        self.eos_token_ids = frozenset(eos_token_ids)
        self.max_model_len = max_model_len

    def check(self, request: Request) -> bool:
        """Set finish_reason / stop_reason (and the stop-truncated text) when `request` must stop now."""
        params = request.params
        token = request.token_ids[-1]
        num_output = request.num_output_tokens
        if num_output >= params.min_tokens:
            if not params.ignore_eos and token in self.eos_token_ids:
                request.finish_reason = "stop"
                return True
            if token in params.stop_token_ids:
                request.finish_reason, request.stop_reason = "stop", token
                return True
            if params.stop_strings and self._check_stop_strings(request):
                return True
        if num_output >= request.max_output_tokens or request.num_tokens >= self.max_model_len:
            request.finish_reason = "length"
            return True
        return False

    def _check_stop_strings(self, request: Request) -> bool:
        text = self.decode(request)
        params = request.params
        # A stop string can only complete in the text added by the newest token, so search its tail.
        # The text before it is what the previous step decoded (cached), else decode it once more.
        tokens_before, length_before = request.stop_text_cache
        if tokens_before != request.num_output_tokens - 1:
            length_before = len(self.decode(request, drop_last=True))
        request.stop_text_cache = (request.num_output_tokens, len(text))
        newest_len = len(text) - length_before
        search_from = max(0, len(text) - newest_len - max(len(s) for s in params.stop_strings) + 1)
        best = None
        for stop in params.stop_strings:
            at = text.find(stop, search_from)
            if at != -1 and (best is None or at < best[0]):
                best = (at, stop)
        if best is None:
            return False
        at, stop = best
        request.output_text = text[: at + len(stop)] if params.include_stop_str_in_output else text[:at]
        request.finish_reason, request.stop_reason = "stop", stop
        return True

    def decode(self, request: Request, drop_last: bool = False) -> str:
        if self.tokenizer is None:
            return ""
        ids = request.output_token_ids
        if drop_last:
            ids = ids[:-1]
        return self.tokenizer.decode(ids, skip_special_tokens=request.params.skip_special_tokens)
