"""Global prefix identification: a prefix tree of the whole batch, a DP that cuts it into prefix groups
(each shared prefix computed once), and reuse statistics."""

from batchllm.prefix.analysis import analyze_prefixes
from batchllm.prefix.lru_sim import LruResult, simulate_lru_prefix_cache
from batchllm.prefix.samples import collapse_repeats, repeat_prompts
from batchllm.prefix.token_arrays import TokenArrays
from batchllm.prefix.tree import PrefixTree, build_prefix_tree
from batchllm.prefix.types import Distribution, PrefixAnalysis, PrefixGroup, PrefixStats

__all__ = [
    "Distribution",
    "LruResult",
    "PrefixAnalysis",
    "PrefixGroup",
    "PrefixStats",
    "PrefixTree",
    "TokenArrays",
    "analyze_prefixes",
    "build_prefix_tree",
    "collapse_repeats",
    "repeat_prompts",
    "simulate_lru_prefix_cache",
]
