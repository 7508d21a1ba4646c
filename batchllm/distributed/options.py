"""How many replicas, on what, and where: validated at construction, with messages that say what to change."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

RAY_MISSING = ("data parallelism runs on Ray, which is not installed: pip install 'batchllm[ray]' "
               "(scripts/install.sh installs it)")


def import_ray():
    try:
        import ray
    except ImportError as err:
        raise ImportError(RAY_MISSING) from err
    return ray


@dataclass(frozen=True)
class DataParallelOptions:
    """num_replicas: engine replicas (Ray actors). gpus_per_replica: GPUs each (a fraction puts several on one
    GPU, 0 runs them on CPU; None: 1 when the cluster has GPUs, else 0). ray_address: an existing cluster
    ("auto" as in Ray); None starts a local Ray instance for the job and stops it after. max_restarts: new
    actors a replica position may get after failures. units_per_replica: how finely the planner cuts the
    work (see batch/work_units.py)."""

    num_replicas: int = 1
    gpus_per_replica: Optional[float] = None
    cpus_per_replica: float = 1.0
    ray_address: Optional[str] = None
    max_restarts: int = 3
    units_per_replica: int = 16

    def __post_init__(self) -> None:
        if not isinstance(self.num_replicas, int) or self.num_replicas < 1:
            raise ValueError(f"data_parallel={self.num_replicas!r}: give the number of replicas, 1 or more")
        if self.gpus_per_replica is not None and not 0 <= self.gpus_per_replica:
            raise ValueError(f"gpus_per_replica={self.gpus_per_replica}: must be >= 0 (0 runs replicas on CPU)")
        if self.gpus_per_replica is not None and self.gpus_per_replica > 1 and self.gpus_per_replica != int(self.gpus_per_replica):
            raise ValueError(f"gpus_per_replica={self.gpus_per_replica}: above 1 it must be a whole number")
        if self.gpus_per_replica is not None and self.gpus_per_replica > 1:
            raise ValueError(f"gpus_per_replica={self.gpus_per_replica}: a replica runs on one GPU (or a fraction "
                             "of one); tensor parallelism inside a replica is not supported")
        if self.cpus_per_replica < 0:
            raise ValueError(f"cpus_per_replica={self.cpus_per_replica}: must be >= 0")
        if self.max_restarts < 0:
            raise ValueError(f"max_restarts={self.max_restarts}: must be >= 0")
        if self.units_per_replica < 1:
            raise ValueError(f"units_per_replica={self.units_per_replica}: must be >= 1")

    def resolved_gpus(self, cluster_gpus: float) -> float:
        """GPUs per replica on a cluster with ``cluster_gpus`` GPUs in all."""
        if self.gpus_per_replica is None:
            return 1.0 if cluster_gpus >= 1 else 0.0
        if self.gpus_per_replica * self.num_replicas > cluster_gpus + 1e-9:
            raise ValueError(
                f"{self.num_replicas} replicas x {self.gpus_per_replica} GPUs need "
                f"{self.num_replicas * self.gpus_per_replica:g} GPUs, but the Ray cluster has {cluster_gpus:g}: lower "
                "--data-parallel, or give each a fraction (--gpus-per-replica 0.5), or 0 to run on CPU")
        return float(self.gpus_per_replica)


def replica_llm_kwargs(llm_kwargs: dict[str, Any], gpus_per_replica: float) -> dict[str, Any]:
    """The LLM arguments of one replica: on CPU without GPUs; with a fraction of a GPU, that share of its memory."""
    kwargs = dict(llm_kwargs)
    if gpus_per_replica == 0:
        kwargs.setdefault("device", "cpu")
    elif gpus_per_replica < 1:
        kwargs["gpu_memory_utilization"] = kwargs.get("gpu_memory_utilization", 0.90) * gpus_per_replica
        kwargs["gpu_memory_is_share"] = True
    return kwargs
