"""Mutable state of one request as it moves through the engine, and of the prefix group it may start from."""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import numpy as np

from batchllm.outputs import RequestMetrics
from batchllm.sampling_params import SamplingParams

# Placeholder for a token the GPU has sampled but the host has not seen yet (the engine launches the next
# iteration before reading the last one's tokens); real token ids are never negative.
PENDING_TOKEN = -1


class RequestStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


class Request:
    def __init__(
        self,
        request_id: str,
        prompt: Optional[str],
        prompt_token_ids: list[int],
        params: SamplingParams,
        max_output_tokens: int,
        arrival_index: int,
    ) -> None:
        self.request_id = request_id
        self.prompt = prompt
        self.prompt_token_ids = list(prompt_token_ids)
        self.params = params
        # max_tokens capped so that prompt + output never exceed max_model_len.
        self.max_output_tokens = max_output_tokens
        self.arrival_index = arrival_index
        self.token_ids: list[int] = list(prompt_token_ids)  # prompt + generated, the tokens whose KV we compute
        self.output_logprobs: list[float] = []
        self.output_top_logprobs: list[dict[int, float]] = []  # per position, the k most likely (logprobs=k >= 1)
        self.pending_token_row = -1  # row of its PENDING_TOKEN in the in-flight iteration's sampled tokens
        self.status = RequestStatus.WAITING
        self.num_computed_tokens = 0
        self.block_ids: list[int] = []
        self.finish_reason: Optional[str] = None
        self.stop_reason: Union[int, str, None] = None
        # Why this request alone failed (finish_reason "error"); set by the engine or the sampler.
        self.error: Optional[str] = None
        self.output_text: Optional[str] = None  # set at finish (or when a stop string is found)
        self.stop_text_cache: tuple[int, int] = (-1, 0)  # (output tokens, decoded text length) at the last check
        self.metrics = RequestMetrics(arrival_time=time.monotonic())
        # A structured-output matcher (xgrammar's, made by engine/structured_outputs.py), advanced by the
        # engine with each received token; None for unconstrained requests.
        self.grammar: Optional[Any] = None
        # --- scheduling state (owned by the scheduler) ---
        self.priority = params.priority  # lower value runs first (vLLM convention)
        # Set on internal requests that only compute a group's shared prefix KV (they never decode).
        self.computes_prefix_of: Optional["SharedPrefix"] = None
        self.group: Optional["SharedPrefix"] = None  # the prefix group whose KV this request starts from
        self.num_shared_blocks = 0  # leading block_ids borrowed from `group` (not this request's own)
        self.has_attached_to_group = False  # counted once among the group's attached members
        self.rank: tuple = (self.priority, arrival_index)  # queue position: smaller runs earlier
        self.reserved_blocks = 0  # KV blocks counted for this request by memory-centric admission
        self.block_hashes: list = []  # prefix-caching hash chain of its full blocks
        self.swapped_blocks: Optional[list[int]] = None  # host blocks holding its private KV while swapped out
        # int32 mirror of block_ids for building block tables without converting the whole list each step
        self._block_array = np.empty(0, dtype=np.int32)
        self._block_array_len = 0
        self._block_array_source: Optional[list[int]] = None

    @property
    def is_prefix(self) -> bool:
        return self.computes_prefix_of is not None

    @property
    def expected_output_tokens(self) -> int:
        """Decode length the scheduler plans for: the user's hint, else max_tokens."""
        hint = self.params.decode_length_hint
        return self.max_output_tokens if hint is None else min(hint, self.max_output_tokens)

    @property
    def reached_max_output(self) -> bool:
        """Its output is as long as allowed (counting a token still in flight): nothing more to schedule."""
        return not self.is_prefix and self.num_output_tokens >= self.max_output_tokens

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens :]

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    def block_table_array(self) -> np.ndarray:
        """block_ids as an int32 array. The scheduler only extends the list or replaces it with a new
        one, so the mirror appends the new tail, or is rebuilt when the list object changed."""
        ids = self.block_ids
        arr, known = self._block_array, self._block_array_len
        if self._block_array_source is not ids or len(ids) < known:
            known = 0
        if len(ids) > len(arr):
            grown = np.empty(max(16, 2 * len(ids)), dtype=np.int32)
            grown[:known] = arr[:known]
            arr = grown
        if len(ids) > known:
            arr[known : len(ids)] = ids[known:]
        self._block_array, self._block_array_len, self._block_array_source = arr, len(ids), ids
        return arr[: len(ids)]

    @property
    def is_finished(self) -> bool:
        return self.status == RequestStatus.FINISHED

    def __repr__(self) -> str:
        return f"Request({self.request_id}, {self.status.value}, computed={self.num_computed_tokens}/{self.num_tokens})"


@dataclass(eq=False)
class SharedPrefix:
    """A prefix group at run time: an internal *prefix request* (prompt[:prefix_len], no decoding) computes
    the shared KV once; members then borrow its blocks and prefill only their own suffix.

    Its lifetime is its own: the group holds the blocks (one hold) from `become_resident` until every member
    has attached once; each attached member is one more holder; the group dies with its last holder. The
    counters change only through these methods; the KV cache manager moves the blocks' references.
    With multi-level sharing, a child group's prefix request is itself a member of the parent group.
    """

    group_id: int
    prefix_len: int
    prefix_request: Request
    members: list[Request] = field(default_factory=list)  # incl. child groups' prefix requests
    blocks: Optional[list[int]] = None  # the prefix's KV blocks once computed; None before and after
    holders: int = 0  # attached members + the group's own hold while members have not all attached
    unattached_members: int = 0
    reserved_blocks: int = 0  # memory-centric reservation carried over from the prefix request
    dead: bool = False

    @property
    def ready(self) -> bool:
        return self.blocks is not None

    @property
    def parent(self) -> Optional["SharedPrefix"]:
        return self.prefix_request.group

    @property
    def all_attached(self) -> bool:
        return self.unattached_members == 0

    @property
    def idle(self) -> bool:
        """Computed, but only the group's own hold keeps it: no member uses it yet."""
        return self.unattached_members > 0 and self.holders == 1

    def add_member(self, request: Request) -> None:
        request.group = self
        self.members.append(request)
        self.unattached_members += 1

    def become_resident(self, blocks: list[int], reserved_blocks: int) -> None:
        """The prefix is computed: its blocks (the prefix request's references) become the group's own hold."""
        self.blocks = blocks
        self.holders += 1
        self.reserved_blocks = reserved_blocks

    def attach(self, request: Request) -> bool:
        """`request` holds the blocks now; True when it was the last member to attach for the first time
        (the group's own hold should then go)."""
        self.holders += 1
        if request.has_attached_to_group:
            return False
        # A flag on the request, not a set of id()s: ids of finished requests are reused by later ones.
        request.has_attached_to_group = True
        self.unattached_members -= 1
        return self.unattached_members == 0

    def drop_holder(self) -> bool:
        """One holder fewer; True when it was the last: the prefix KV is gone (its holders released the blocks)."""
        self.holders -= 1
        if self.holders:
            return False
        self.blocks = None
        self.dead = True
        return True

    def take_reservation(self) -> int:
        reserved, self.reserved_blocks = self.reserved_blocks, 0
        return reserved
