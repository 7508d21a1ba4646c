"""A batch's prefix groups: the offline analysis turned into run-time groups, each with its prefix request."""

from __future__ import annotations

from typing import Optional, Sequence

from batchllm.core.request import Request, SharedPrefix
from batchllm.prefix import analyze_prefixes
from batchllm.sampling_params import SamplingParams

_PREFIX_PARAMS = SamplingParams(temperature=0.0, max_tokens=1)


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
            parent.add_member(prefix_request)
        for index in group.member_ids.tolist():
            runtime.add_member(requests[index])
    return list(shared.values())


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
