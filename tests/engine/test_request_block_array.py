"""The int32 mirror of a request's block list follows every way the scheduler changes the list."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from batchllm.core.request import Request
from batchllm.sampling_params import SamplingParams

# extend by k new blocks | replace by a prefix of the list (freeing the private tail) | replace by new blocks
_ops = st.lists(
    st.one_of(
        st.tuples(st.just("extend"), st.integers(0, 40)),
        st.tuples(st.just("keep_prefix"), st.integers(0, 30)),
        st.tuples(st.just("replace"), st.integers(0, 40)),
    ),
    max_size=30,
)


@settings(max_examples=200, deadline=None)
@given(_ops)
def test_block_table_array_mirrors_block_ids(ops):
    request = Request("r", None, [1, 2, 3], SamplingParams(), 4, 0)
    next_block = 1000
    for op, k in ops:
        if op == "extend":
            request.block_ids.extend(range(next_block, next_block + k))
        elif op == "keep_prefix":
            request.block_ids = request.block_ids[:k]
        else:
            request.block_ids = list(range(next_block, next_block + k))
        next_block += 50
        assert request.block_table_array().tolist() == request.block_ids
