"""FCFS scheduler rules: token budget, sequence cap, chunking, preemption order, no block leaks."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from batchllm.config import SchedulerConfig
from batchllm.engine.request import Request, RequestStatus
from batchllm.kv_cache.block_pool import BlockPool
from batchllm.sampling_params import SamplingParams
from batchllm.scheduler.fcfs import FCFSScheduler


def _request(i: int, prompt_len: int, max_tokens: int = 4) -> Request:
    return Request(str(i), None, list(range(1, prompt_len + 1)), SamplingParams(max_tokens=max_tokens), max_tokens, i)


def _run_step(scheduler: FCFSScheduler, out, finished: list[Request]) -> None:
    """Pretend the model ran: advance computed tokens, sample token 7, finish at max tokens."""
    for chunk in out.chunks:
        request = chunk.request
        samples = chunk.completes_sequence
        request.num_computed_tokens += chunk.num_new_tokens
        if samples:
            request.token_ids.append(7)
            if request.num_output_tokens >= request.max_output_tokens:
                request.status = RequestStatus.FINISHED
                scheduler.finish_request(request)
                finished.append(request)


def test_budget_cap_and_chunking():
    pool = BlockPool(100)
    scheduler = FCFSScheduler(SchedulerConfig(max_num_batched_tokens=10, max_num_seqs=2), pool, block_size=4)
    for i, n in enumerate([7, 8, 3]):
        scheduler.add_request(_request(i, n))
    out = scheduler.schedule()
    assert [(c.request.request_id, c.num_new_tokens) for c in out.chunks] == [("0", 7), ("1", 3)]
    assert not out.chunks[1].completes_sequence
    _run_step(scheduler, out, [])
    out = scheduler.schedule()  # request 0 decodes, request 1 continues; request 2 waits for the cap
    assert [(c.request.request_id, c.num_new_tokens) for c in out.chunks] == [("0", 1), ("1", 5)]


def test_preempts_latest_arrival_and_requeues_it_first():
    pool = BlockPool(4)
    scheduler = FCFSScheduler(SchedulerConfig(max_num_batched_tokens=64, max_num_seqs=None), pool, block_size=4)
    a, b = _request(0, 7, max_tokens=6), _request(1, 8, max_tokens=6)
    scheduler.add_request(a)
    scheduler.add_request(b)
    _run_step(scheduler, scheduler.schedule(), [])  # a: 2 blocks (8 tokens), b: 2 blocks (9 tokens after sample)
    out = scheduler.schedule()  # b's 9th token needs a third block: b (latest) is preempted
    assert out.preempted == [b] and b.num_computed_tokens == 0 and b.block_ids == []
    assert scheduler.waiting[0] is b and [c.request for c in out.chunks] == [a]


@settings(max_examples=60, deadline=None)
@given(
    prompt_lens=st.lists(st.integers(1, 30), min_size=1, max_size=8),
    max_tokens=st.integers(1, 6),
    budget=st.integers(1, 40),
    num_blocks=st.integers(9, 30),
    max_seqs=st.one_of(st.none(), st.integers(1, 4)),
)
def test_every_request_finishes_and_all_blocks_return(prompt_lens, max_tokens, budget, num_blocks, max_seqs):
    block_size = 4  # 9 blocks fit the longest request (30 + 6 tokens)
    pool = BlockPool(num_blocks)
    scheduler = FCFSScheduler(SchedulerConfig(max_num_batched_tokens=budget, max_num_seqs=max_seqs), pool, block_size)
    requests = [_request(i, n, max_tokens) for i, n in enumerate(prompt_lens)]
    for r in requests:
        scheduler.add_request(r)
    finished: list[Request] = []
    for _ in range(2000):
        if not scheduler.has_unfinished():
            break
        out = scheduler.schedule()
        assert out.chunks, "no progress"
        assert out.num_tokens <= budget
        assert max_seqs is None or len(scheduler.running) <= max_seqs
        held = sum(len(r.block_ids) for r in scheduler.running)
        assert held == pool.num_used
        _run_step(scheduler, out, finished)
    assert sorted(r.request_id for r in finished) == sorted(r.request_id for r in requests)
    assert all(r.num_output_tokens == max_tokens for r in requests)
    assert pool.num_free == num_blocks
