"""Queue order: first-come-first-served, or decode-first: work with the most expected decode per prefill
token starts first, so long prefills come late and mix with running decodes."""

from __future__ import annotations

from typing import Sequence

from batchllm.core.request import Request, SharedPrefix


def _prefill_tokens(request: Request) -> int:
    start = request.group.prefix_len if request.group is not None else 0
    return max(1, request.num_prompt_tokens - start)


def decode_ratio(request: Request) -> float:
    """Expected decode tokens per prefill token this request itself computes."""
    return request.expected_output_tokens / _prefill_tokens(request)


def order_requests(
    requests: Sequence[Request], groups: Sequence[SharedPrefix], decode_first: bool
) -> list[Request]:
    """Every request and prefix request once, in run order; a group's prefix request precedes its members.

    FCFS: groups and members by first arrival. Decode-first: groups by their members' total expected
    decode over total prefill (prefix counted once), members by their own ratio, largest first, so
    long-decoding work starts early and long prefills come late, mixing with running decodes.
    """
    tops: list[tuple[float, int, object]] = []  # (key, tie, item): item is a Request or a SharedPrefix
    for request in requests:
        if request.group is None:
            key = -decode_ratio(request) if decode_first else 0.0
            tops.append((key, request.arrival_index, request))
    group_info: dict[int, tuple[int, int, int]] = {}
    for group in reversed(groups):  # pre-order reversed: every child is summarised before its parent
        group_info[id(group)] = _group_summary(group, group_info)
    for group in groups:
        if group.parent is None:  # first-level group
            decode, prefill, first = group_info[id(group)]
            tops.append((-decode / prefill if decode_first else 0.0, first, group))
    tops.sort(key=lambda t: (t[0], t[1]))
    ordered: list[Request] = []
    for _, _, item in tops:
        _emit(item, ordered, group_info, decode_first)
    return ordered


def _group_summary(group: SharedPrefix, child_info: dict[int, tuple[int, int, int]]) -> tuple[int, int, int]:
    """(expected decode tokens, prefill tokens incl. the prefix once, first arrival index) of a group;
    `child_info` already holds the summaries of its child groups."""
    decode, prefill, first = 0, group.prefix_len - _parent_len(group), 1 << 62
    for member in group.members:
        if member.is_prefix:
            d, p, f = child_info[id(member.computes_prefix_of)]
        else:
            d, p, f = member.expected_output_tokens, _prefill_tokens(member), member.arrival_index
        decode, prefill, first = decode + d, prefill + p, min(first, f)
    return decode, max(1, prefill), first


def _parent_len(group: SharedPrefix) -> int:
    return group.parent.prefix_len if group.parent is not None else 0


def _emit(item, ordered: list[Request], group_info, decode_first: bool) -> None:
    if isinstance(item, Request):
        ordered.append(item)
        return
    group: SharedPrefix = item
    ordered.append(group.prefix_request)
    keyed = []
    for member in group.members:
        if member.is_prefix:
            child = member.computes_prefix_of
            decode, prefill, first = group_info[id(child)]
            keyed.append(((-decode / prefill) if decode_first else 0.0, first, child))
        else:
            keyed.append(((-decode_ratio(member)) if decode_first else 0.0, member.arrival_index, member))
    keyed.sort(key=lambda t: (t[0], t[1]))
    for _, _, sub in keyed:
        _emit(sub, ordered, group_info, decode_first)
