"""Public result types of the prefix analysis (frozen dataclasses)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Optional

import numpy as np

from batchllm.prefix.tree import PrefixTree


@dataclass(frozen=True, eq=False)
class PrefixGroup:
    """A shared prefix and the requests that use it.

    group_id: index in ``PrefixAnalysis.groups``.
    shared_prefix_len: tokens of the prefix every member starts with (computed once for the group). 0 marks
        the single "ungrouped" group of requests that share nothing worth a prefix pass; it is always last.
    member_ids: request indices (ascending, read-only) whose deepest group this is (with multi-level sharing a
        group may have none of its own: ``PrefixAnalysis.requests_using`` lists its whole subtree).
    parent_group_id: with multi-level sharing, the group whose prefix this one extends (its KV is reused
        for the first ``groups[parent].shared_prefix_len`` tokens); None for first-level groups.
    """

    group_id: int
    shared_prefix_len: int
    member_ids: np.ndarray
    parent_group_id: Optional[int] = None

    @property
    def num_members(self) -> int:
        return len(self.member_ids)

    @property
    def is_ungrouped(self) -> bool:
        return self.shared_prefix_len == 0


@dataclass(frozen=True)
class Distribution:
    """Summary of a list of numbers (all 0 when empty)."""

    count: int
    min: float
    mean: float
    p50: float
    p90: float
    max: float

    @classmethod
    def of(cls, values: np.ndarray) -> "Distribution":
        if len(values) == 0:
            return cls(0, 0.0, 0.0, 0.0, 0.0, 0.0)
        v = np.asarray(values, dtype=np.float64)
        p50, p90 = np.percentile(v, [50, 90])
        return cls(len(v), float(v.min()), float(v.mean()), float(p50), float(p90), float(v.max()))


@dataclass(frozen=True)
class PrefixStats:
    """What prefix sharing gains on a batch.

    prompts, prompt_tokens: the input. saved_tokens: prompt tokens whose prefill the grouping avoids.
    prefill_tokens = prompt_tokens - saved_tokens. reuse_ratio = saved_tokens / prompt_tokens.
    trie_reuse_ratio: the upper bound (every shared token of the prefix tree computed once, any depth,
        token granularity, every request keeping its last token).
    groups: sharing groups (shared_prefix_len > 0); grouped_prompts / ungrouped_prompts: requests in them / not.
    group_size, shared_prefix_len: distributions over the sharing groups; group_size_histogram: sizes bucketed
        by powers of two ("2", "3-4", "5-8", ...).
    block_size, aligned_to_blocks: whether shared prefixes were cut to whole KV blocks of block_size tokens.
    min_shared_len: shorter shared prefixes are not grouped. multi_level: nested groups allowed.
    exact: False only if the DP had to cap a pathologically deep tree.
    lru_cache_blocks, lru_saved_tokens, lru_reuse_ratio: an LRU prefix cache of that many blocks, requests in
        input (FCFS) order (None if not simulated).
    """

    prompts: int
    prompt_tokens: int
    prefill_tokens: int
    saved_tokens: int
    reuse_ratio: float
    trie_saved_tokens: int
    trie_reuse_ratio: float
    groups: int
    grouped_prompts: int
    ungrouped_prompts: int
    group_size: Distribution
    shared_prefix_len: Distribution
    group_size_histogram: dict[str, int]
    block_size: int
    aligned_to_blocks: bool
    min_shared_len: int
    multi_level: bool
    exact: bool
    lru_cache_blocks: Optional[int] = None
    lru_saved_tokens: Optional[int] = None
    lru_reuse_ratio: Optional[float] = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, eq=False)
class PrefixAnalysis:
    """Result of ``analyze_prefixes``.

    groups: every request appears in exactly one group's member_ids (the ungrouped ones in the last group,
        shared_prefix_len 0). First-level mode: all parent_group_id are None. Multi-level mode: groups form a
        forest in pre-order (a parent before its children) and a request belongs to its deepest group.
    request_group: group_id of each request (int64 array).
    stats: PrefixStats. tree: the prefix tree the groups were chosen on (over prompts minus their last token).
    """

    groups: tuple[PrefixGroup, ...]
    request_group: np.ndarray
    stats: PrefixStats
    tree: PrefixTree

    @property
    def sharing_groups(self) -> tuple[PrefixGroup, ...]:
        return tuple(g for g in self.groups if not g.is_ungrouped)

    def requests_using(self, group_id: int) -> np.ndarray:
        """Requests whose prompt uses this group's prefix KV: its members and those of its descendant groups."""
        parts = [self.groups[group_id].member_ids]
        inside = {group_id}
        for g in self.groups[group_id + 1 :]:
            if g.parent_group_id not in inside:
                break  # pre-order: a group's descendants follow it contiguously
            inside.add(g.group_id)
            parts.append(g.member_ids)
        return np.sort(np.concatenate(parts))

    def saved_tokens_recount(self) -> int:
        """Saved tokens recounted from the groups alone (tests compare it with stats.saved_tokens)."""
        total = 0
        by_id = {g.group_id: g for g in self.groups}
        subtree = {g.group_id: g.num_members for g in self.groups}
        for g in reversed(self.groups):  # children after parents: accumulate subtree sizes upwards
            if g.parent_group_id is not None:
                subtree[g.parent_group_id] += subtree[g.group_id]
        for g in self.groups:
            parent_len = by_id[g.parent_group_id].shared_prefix_len if g.parent_group_id is not None else 0
            total += (subtree[g.group_id] - 1) * (g.shared_prefix_len - parent_len) if g.shared_prefix_len else 0
        return total
