"""The kernels' common prologue: which sequence and query tile a program owns, and its query rows.

Rows of a tile are (query token, query head of the KV head's group) pairs, token-major: row r is
token r // G, head r % G, so the G query heads that share a KV head fill the M dimension of tl.dot.
Triton inlines these helpers, so a kernel that calls them compiles as if the code were written there.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def find_seq(qsl_ptr, seq_begin, seq_end, base, pid, BLOCK_Q: tl.constexpr):
    """Largest seq in [seq_begin, seq_end) whose first query tile index is <= pid.

    Tile index of seq i's first tile: (qsl[i] - base) // BLOCK_Q + (i - seq_begin); an upper bound
    on the tiles of the sequences before it, so a grid of (T // BLOCK_Q + B) covers every tile
    without host-side scheduling (same trick as vLLM's unified Triton attention).
    """
    lo = seq_begin
    hi = seq_end
    while lo < hi:
        mid = (lo + hi) // 2
        start = (tl.load(qsl_ptr + mid) - base) // BLOCK_Q + (mid - seq_begin)
        if start <= pid:
            lo = mid + 1
        else:
            hi = mid
    return lo - 1


@triton.jit
def seq_query_tile(qsl_ptr, seq_begin, seq_end, tile, BLOCK_Q: tl.constexpr, IS_DECODE: tl.constexpr):
    """(seq, q_start, q_len, tok0) of query tile `tile` of sequences [seq_begin, seq_end): its sequence,
    that sequence's first flat query token and query count, and the tile's first token within it
    (tok0 >= q_len: the tile is past the sequence's queries and has nothing to do)."""
    if IS_DECODE:
        # Every sequence has q_len <= 1: tile i is sequence seq_begin + i, no search needed.
        seq = seq_begin + tile
        q_tile = 0
    else:
        base = tl.load(qsl_ptr + seq_begin)
        seq = find_seq(qsl_ptr, seq_begin, seq_end, base, tile, BLOCK_Q)
        q_tile = tile - ((tl.load(qsl_ptr + seq) - base) // BLOCK_Q + (seq - seq_begin))
    q_start = tl.load(qsl_ptr + seq)
    q_len = tl.load(qsl_ptr + seq + 1) - q_start
    tok0 = q_tile * BLOCK_Q
    return seq, q_start, q_len, tok0


@triton.jit
def load_query_rows(
    q_ptr, q_start, tok0, tok_end, kvh, stride_qt, stride_qh,
    G: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_Q: tl.constexpr, HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr,
):  # fmt: skip
    """(q [BLOCK_M, D_PAD], row_tok, head, row_ok, t_idx) of the tile's rows: tokens tok0 + [0, BLOCK_Q)
    (those < tok_end are live) of KV head kvh's group; flat query token of a row = q_start + row_tok."""
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D_PAD)
    row_tok = tok0 + offs_m // G
    head = kvh * G + offs_m % G
    row_ok = (offs_m < BLOCK_Q * G) & (row_tok < tok_end)
    t_idx = (q_start + row_tok).to(tl.int64)
    q = tl.load(
        q_ptr + (t_idx * stride_qt + head * stride_qh)[:, None] + offs_d[None, :],
        mask=row_ok[:, None] & (offs_d < HEAD_DIM)[None, :],
        other=0.0,
    )
    return q, row_tok, head, row_ok, t_idx
