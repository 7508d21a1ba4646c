"""Prefix groups at run time: who computes a shared prefix once, who borrows its KV blocks, when it dies.

A group's prefix is computed by an internal *prefix request* (prompt[:shared_prefix_len], no decoding).
When it finishes, its blocks become the group's; members then start from them (sharing by reference
count) and prefill only their own suffix. The group holds its blocks until every member has attached
once; afterwards the blocks live exactly as long as some member (or child group) still holds them.
With multi-level sharing, a child group's prefix request is itself a member of the parent group.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

from batchllm.engine.request import Request
from batchllm.prefix import analyze_prefixes
from batchllm.sampling_params import SamplingParams

_PREFIX_PARAMS = SamplingParams(temperature=0.0, max_tokens=1)


@dataclass(eq=False)
class SharedPrefix:
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


def build_prefix_groups(
    requests: Sequence[Request], block_size: int, min_shared_len: Optional[int], multi_level: bool, first_id: int
) -> list[SharedPrefix]:
    """Cluster `requests` by shared prefix (block-aligned DP of batchllm.prefix); wire members to groups."""
    analysis = analyze_prefixes(
        [r.prompt_token_ids for r in requests],
        block_size=block_size,
        min_shared_len=min_shared_len,
        align_to_blocks=True,
        multi_level=multi_level,
    )
    shared: dict[int, SharedPrefix] = {}
    for group in analysis.groups:  # parents come before children
        if group.is_ungrouped:
            continue
        first_member = requests[int(group.member_ids[0])] if len(group.member_ids) else None
        parent = shared.get(group.parent_group_id) if group.parent_group_id is not None else None
        source = first_member or _any_descendant(analysis, group.group_id, requests)
        prefix_request = Request(
            f"prefix-{first_id + group.group_id}",
            None,
            source.prompt_token_ids[: group.shared_prefix_len],
            _PREFIX_PARAMS,
            max_output_tokens=0,
            arrival_index=-1,
        )
        runtime = SharedPrefix(first_id + group.group_id, group.shared_prefix_len, prefix_request)
        prefix_request.computes_prefix_of = runtime
        shared[group.group_id] = runtime
        if parent is not None:
            _attach_member(parent, prefix_request)
        for index in group.member_ids.tolist():
            _attach_member(runtime, requests[index])
    return list(shared.values())


def _attach_member(group: SharedPrefix, request: Request) -> None:
    request.group = group
    group.members.append(request)
    group.unattached_members += 1


def _any_descendant(analysis, group_id: int, requests: Sequence[Request]) -> Request:
    """A request under `group_id` (a multi-level group may have only child groups as members)."""
    children = {g.group_id: g for g in analysis.groups if g.parent_group_id == group_id}
    stack = list(children.values())
    while stack:
        group = stack.pop()
        if len(group.member_ids):
            return requests[int(group.member_ids[0])]
        stack.extend(g for g in analysis.groups if g.parent_group_id == group.group_id)
    raise AssertionError(f"prefix group {group_id} has no requests under it")
