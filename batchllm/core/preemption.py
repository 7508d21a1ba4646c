"""Cost model for choosing between swapping a preempted request's KV to host memory and recomputing it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PreemptionCosts:
    """Seconds to recompute tokens (2 x params FLOPs each) vs. to copy blocks out and back in.

    The defaults are rough H100 figures (sustained matmul rate, PCIe 5 x16 pinned copies); the engine
    passes the model's real sizes. Only the comparison matters.
    """

    flops_per_token: float = 2 * 8e9
    compute_flops_per_s: float = 4e14
    block_bytes: float = 16 * 131072
    host_bytes_per_s: float = 2.5e10

    def recompute_seconds(self, tokens: int) -> float:
        return max(0, tokens) * self.flops_per_token / self.compute_flops_per_s

    def swap_seconds(self, blocks: int) -> float:
        return 2 * blocks * self.block_bytes / self.host_bytes_per_s  # out now, back in later
