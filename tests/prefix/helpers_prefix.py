"""Pure-Python oracles and strategies for the prefix-analysis tests (slow, obviously correct)."""

from __future__ import annotations

from hypothesis import strategies as st


def common_prefix(prompts: list[list[int]]) -> int:
    k = 0
    while all(len(p) > k for p in prompts) and len({p[k] for p in prompts}) == 1:
        k += 1
    return k


def group_value(prompts: list[list[int]], block_size: int, align: bool, min_shared: int) -> int:
    """Tokens a group saves under the engine's rules (each member keeps its last token)."""
    if len(prompts) < 2:
        return 0
    s = min(common_prefix(prompts), min(len(p) - 1 for p in prompts))
    if align:
        s = s // block_size * block_size
    if s < max(min_shared, 1):
        return 0
    return (len(prompts) - 1) * s


def set_partitions(items: list[int]):
    if not items:
        yield []
        return
    first, rest = items[0], items[1:]
    for part in set_partitions(rest):
        for i in range(len(part)):
            yield part[:i] + [[first] + part[i]] + part[i + 1 :]
        yield [[first]] + part


def brute_force_best(prompts: list[list[int]], block_size: int, align: bool, min_shared: int) -> int:
    return max(
        sum(group_value([prompts[i] for i in g], block_size, align, min_shared) for g in part)
        for part in set_partitions(list(range(len(prompts))))
    )


@st.composite
def prompt_sets(draw, max_prompts: int = 12, max_len: int = 70, alphabet: int = 3):
    """Prompts that share prefixes: each new prompt extends a random cut of an earlier one (or is fresh)."""
    n = draw(st.integers(0, max_prompts))
    token = st.integers(0, alphabet - 1)
    prompts: list[list[int]] = []
    for _ in range(n):
        if prompts and draw(st.booleans()):
            base = prompts[draw(st.integers(0, len(prompts) - 1))]
            cut = draw(st.integers(0, len(base)))
            suffix = draw(st.lists(token, max_size=max(0, max_len - cut) // 2))
            prompts.append(base[:cut] + suffix)
        else:
            prompts.append(draw(st.lists(token, max_size=max_len)))
    return prompts
