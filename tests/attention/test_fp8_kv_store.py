"""The one-launch FP8 KV store (attention/triton/kv_write.py) writes the bytes of the PyTorch store
(`write_kv_cache`: divide by the head's scale, clamp, round) and nothing else (CPU: Triton interpreter)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from batchllm.attention.kv_store import write_kv_cache  # noqa: E402
from batchllm.attention.triton.kv_write import store_kv_fp8  # noqa: E402
from batchllm.kv_cache.fp8 import FP8_KV_DTYPE, attach_kv_scale  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
NAN_BYTE = 0x7F  # e4m3fn NaN: every slot the store must not touch keeps it


def _caches(blocks: int, block_size: int, heads: int, dim: int, scales: tuple) -> tuple:
    out = []
    for scale in scales:
        shape = (blocks, block_size, heads, dim)
        cache = torch.full(shape, NAN_BYTE, dtype=torch.uint8, device=DEVICE).view(FP8_KV_DTYPE)
        attach_kv_scale(cache, torch.tensor(scale, device=DEVICE))
        out.append(cache)
    return out


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("heads, dim", [(2, 32), (3, 96)])  # 3 x 96: head and dim blocks wider than the data
def test_one_launch_store_equals_the_pytorch_store(dtype, heads, dim):
    g = torch.Generator().manual_seed(dim)
    tokens, blocks, block_size = 9, 6, 4
    # K and V as the attention layer has them: views into one fused qkv row (token stride > heads x dim).
    qkv = (torch.randn(tokens, (4 + 2) * heads * dim, generator=g) * 3).to(dtype).to(DEVICE)
    key = qkv[:, 4 * heads * dim : 5 * heads * dim].view(tokens, heads, dim)
    value = qkv[:, 5 * heads * dim :].view(tokens, heads, dim)
    key[0, 0, 0] = 1e4  # past e4m3's range at any scale here: clamped to 448 x scale
    slots = torch.randperm(blocks * block_size, generator=g)[:tokens].to(DEVICE)
    scales = ([0.5, 1.25, 3.0][:heads], [2.0, 0.75, 0.1][:heads])
    got_k, got_v = _caches(blocks, block_size, heads, dim, scales)
    want_k, want_v = _caches(blocks, block_size, heads, dim, scales)
    store_kv_fp8(key, value, got_k, got_v, slots)
    write_kv_cache(key, value, want_k, want_v, slots)
    for got, want in ((got_k, want_k), (got_v, want_v)):
        flat_got, flat_want = got.view(-1, heads, dim), want.view(-1, heads, dim)
        # Written slots: the same values (as floats: the interpreter may write +0 for a negative that rounds to 0).
        assert torch.equal(flat_got[slots].float(), flat_want[slots].float())
        untouched = torch.ones(blocks * block_size, dtype=torch.bool, device=DEVICE)
        untouched[slots] = False
        assert (flat_got[untouched].view(torch.uint8) == NAN_BYTE).all()
    assert got_k.view(-1, heads, dim)[slots[0], 0, 0].float().item() == 448.0


def test_empty_iterations_and_wrong_caches():
    k, v = _caches(2, 4, 2, 32, ([1.0, 1.0], [1.0, 1.0]))
    empty = torch.zeros(0, 2, 32, device=DEVICE)
    store_kv_fp8(empty, empty, k, v, torch.zeros(0, dtype=torch.long, device=DEVICE))
    assert (k.view(torch.uint8) == NAN_BYTE).all()
    with pytest.raises(ValueError, match="two FP8 caches"):
        store_kv_fp8(empty, empty, k.float(), v.float(), torch.zeros(0, dtype=torch.long, device=DEVICE))
