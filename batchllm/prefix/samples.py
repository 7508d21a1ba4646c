"""Prompts that run several times (n samples of one request): analysed as that many identical prompts.

A request with n samples runs as n engine requests with one prompt, which the scheduler groups like any
shared prefix (the prompt's whole blocks below its last token are computed once). The offline analysis
must see them the same way to report the reuse that really happens, and to let the DP weigh a prompt by
how often it runs. ``repeat_prompts`` expands the prompts (the copies of one prompt adjacent, as the engine
gets them); ``collapse_repeats`` maps an analysis of the expansion back to one entry per request.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from batchllm.prefix.token_arrays import TokenArrays
from batchllm.prefix.types import PrefixAnalysis

# Tokens gathered per numpy call: bounds the int64 gather index (8 bytes a token) whatever the file's size.
CHUNK_TOKENS = 1 << 24


def repeat_prompts(prompts: TokenArrays, repeats: np.ndarray, chunk_tokens: int = CHUNK_TOKENS) -> TokenArrays:
    """Prompt i ``repeats[i]`` times in a row (0 leaves it out: a subset of the prompts, without copying).

    Memory: the result is a new int32 token array of sum(repeats[i] * len(prompt i)) tokens; the gather runs
    in chunks of about ``chunk_tokens`` tokens, with per-copy arrays of a few int64 each and no Python list.
    """
    repeats = np.asarray(repeats, dtype=np.int64)
    if len(repeats) != prompts.num_prompts or (len(repeats) and repeats.min() < 0):
        raise ValueError(f"repeats: give one count >= 0 per prompt ({prompts.num_prompts} prompts, "
                         f"{len(repeats)} counts)")
    lengths = np.repeat(prompts.lengths, repeats)
    sources = np.repeat(prompts.offsets[:-1], repeats)  # where each copy's tokens start in the input
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    tokens = np.empty(int(offsets[-1]), dtype=np.int32)
    begin = 0
    while begin < len(lengths):
        # At least one copy per chunk, so a prompt longer than the chunk still goes through.
        end = max(int(np.searchsorted(offsets, offsets[begin] + chunk_tokens, side="right")) - 1, begin + 1)
        lo, hi = int(offsets[begin]), int(offsets[end])
        # Token j of the chunk comes from its copy's source start plus j's distance from the copy's start.
        shift = np.repeat(sources[begin:end] - (offsets[begin:end] - lo), lengths[begin:end])
        tokens[lo:hi] = prompts.tokens[shift + np.arange(hi - lo, dtype=np.int64)]
        begin = end
    return TokenArrays(tokens, offsets)


def collapse_repeats(analysis: PrefixAnalysis, repeats: np.ndarray) -> PrefixAnalysis:
    """The analysis of ``repeat_prompts(prompts, repeats)`` with one entry per original prompt.

    groups and request_group refer to the original prompts; the copies of a prompt are identical, so they
    share their deepest prefix-tree node and with it their group (the grouping is a function of the node).
    A group formed by the copies of one prompt alone keeps that one member. stats and tree stay those of
    the expansion: they count every copy (prompts, prompt tokens, tokens saved and to prefill).
    """
    repeats = np.asarray(repeats, dtype=np.int64)
    if len(repeats) and repeats.min() < 1:
        raise ValueError("repeats: every prompt must be in the expansion (counts >= 1) to be mapped back")
    first = np.zeros(len(repeats), dtype=np.int64)
    np.cumsum(repeats[:-1], out=first[1:])
    request_group = np.asarray(analysis.request_group)[first]
    by_group = np.argsort(request_group, kind="stable")  # stable: members ascending, as materialize_groups
    by_group.flags.writeable = False
    bounds = np.searchsorted(request_group[by_group], np.arange(len(analysis.groups) + 1)).tolist()
    groups = tuple(dataclasses.replace(g, member_ids=by_group[bounds[g.group_id]: bounds[g.group_id + 1]])
                   for g in analysis.groups)
    return PrefixAnalysis(groups=groups, request_group=request_group, stats=analysis.stats, tree=analysis.tree)

