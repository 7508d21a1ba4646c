"""Data parallelism over Ray: engine replicas as actors, fed work units of whole prefix groups by the driver.

``options`` (validated settings, the Ray import) at the bottom, ``replica`` (the actor), ``dispatch`` (the
driver: plan, hand out, requeue after failures), ``ray_data`` (the same for a ``ray.data.Dataset``) on top.
"""

from batchllm.distributed.dispatch import DataParallelExecutor
from batchllm.distributed.options import DataParallelOptions
from batchllm.distributed.ray_data import generate as generate_dataset

__all__ = ["DataParallelExecutor", "DataParallelOptions", "generate_dataset"]
