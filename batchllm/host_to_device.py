"""Host-to-device copies of per-iteration inputs that never wait for the GPU."""

from __future__ import annotations

from typing import Sequence, Union

import numpy as np
import torch


def to_device(values: Union[np.ndarray, Sequence[int]], dtype: torch.dtype, device: torch.device | str) -> torch.Tensor:
    """`values` as a `dtype` tensor on `device`, queued behind the work already on the stream.

    A copy from pageable memory may make the host wait until the stream drains; staged through pinned
    memory it is queued like a kernel, so the host can prepare iteration i+1 while iteration i runs.
    """
    host = torch.as_tensor(values, dtype=dtype)
    if torch.device(device).type != "cuda":
        return host
    return host.pin_memory().to(device, non_blocking=True)
