"""The bitmask filler: a fill in a worker thread equals the inline fill, and accepting tokens side by side in
threads (many rows) gives each matcher the state the serial path gives it."""

from __future__ import annotations

import pytest

xgrammar = pytest.importorskip("xgrammar")

import torch  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from batchllm.sampling_params import StructuredOutputsParams  # noqa: E402
from batchllm.structured.bitmasks import ACCEPTED, COMPLETE, REJECTED, BitmaskFiller, _MIN_ROWS_FOR_THREADS  # noqa: E402
from batchllm.structured.grammars import GrammarCompiler  # noqa: E402


@pytest.fixture(scope="module")
def compiler(text_model) -> GrammarCompiler:
    return GrammarCompiler(AutoTokenizer.from_pretrained(text_model), vocab_size=49152)


def test_threaded_accepts_and_background_fill_equal_the_serial_path(compiler):
    spec = StructuredOutputsParams(choice=["yes", "no", "maybe not"])
    rows = 3 * _MIN_ROWS_FOR_THREADS  # enough rows for the threads
    filler = BitmaskFiller(49152, max_threads=3)
    threaded = [compiler.matcher(spec) for _ in range(rows)]
    serial = [compiler.matcher(spec) for _ in range(rows)]
    # The allowed first tokens, from one matcher's mask: rows accept different ones, some rejected.
    first = filler.fill([serial[0]], [0], 1, torch.device("cpu")).bits[0]
    allowed = [t for t in range(49152) if (int(first[t // 32]) >> (t % 32)) & 1]
    assert 0 < len(allowed) < 49152
    tokens = [allowed[i % len(allowed)] if i % 5 else 0 for i in range(rows)]  # 0 is "<|endoftext|>"

    states_threaded = filler.accept(threaded, tokens)
    states_serial = BitmaskFiller(49152, max_threads=1).accept(serial, tokens)
    assert states_threaded == states_serial
    assert REJECTED in states_threaded and ACCEPTED in states_threaded

    live = [i for i, s in enumerate(states_threaded) if s != REJECTED]
    inline = filler.fill([serial[i] for i in live], live, rows, torch.device("cpu"))
    inline_bits = inline.bits.clone()
    background = filler.start_fill([threaded[i] for i in live], live, rows, torch.device("cpu")).result()
    assert background.rows == inline.rows == live
    assert torch.equal(background.bits[live], inline_bits[live])


def test_a_completed_constraint_says_so(compiler):
    spec = StructuredOutputsParams(choice=["a"])
    matcher = compiler.matcher(spec)
    filler = BitmaskFiller(49152, max_threads=1)
    bits = filler.fill([matcher], [0], 1, torch.device("cpu")).bits[0]
    allowed = [t for t in range(49152) if (int(bits[t // 32]) >> (t % 32)) & 1]
    assert filler.accept([matcher], [allowed[0]]) == [ACCEPTED]  # "a": complete, but not ended yet
    stop = compiler.tokenizer_info.stop_token_ids[0]
    assert filler.accept([matcher], [stop]) == [COMPLETE]
