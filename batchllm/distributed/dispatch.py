"""The driver's side of data parallelism: replicas as Ray actors, work units handed out as they ask.

``DataParallelExecutor`` is a ``RequestExecutor`` (see ``batch/executor.py``): the batch job reads,
checks and analyses the input and writes every result line itself; this only runs the requests. It
plans work units of whole prefix groups (``batch/work_units.py``), largest first, and keeps one unit
waiting at every replica beyond the one its engine is taking in. A replica that dies (process killed,
out of memory, node lost: Ray reports it as an actor error) has its unfinished requests put back at the
front of the queue as new units, and is replaced by a new actor up to ``max_restarts`` times. A result
is yielded once: a request whose output was received is never run again.
"""

from __future__ import annotations

import collections
import os
import queue
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any, Iterator, Optional

import numpy as np

from batchllm.batch.executor import ModelFacts
from batchllm.batch.store import CompactRequests
from batchllm.batch.summary import BatchSummary
from batchllm.batch.work_units import plan_from_analysis, round_robin_prefill_tokens
from batchllm.distributed.options import DataParallelOptions, import_ray, replica_llm_kwargs
from batchllm.distributed.replica import EngineReplica, ReplicaInfo
from batchllm.outputs import RequestOutput

PREFETCH_UNITS = 1  # units waiting at a replica beyond the one its engine is taking in


@dataclass
class _Unit:
    unit_id: int
    request_ids: np.ndarray
    rerun_of: Optional[int] = None


@dataclass
class _Slot:
    """One replica position: its current actor (a new one after a failure) and what it holds."""

    index: int
    actor: Any = None
    generation: int = 0
    ready: bool = False
    alive: bool = False
    restarts: int = 0
    info: Optional[ReplicaInfo] = None
    queued: int = 0  # submitted, not yet taken by the engine
    units: dict = field(default_factory=dict)  # unit_id -> _Unit, submitted and not done
    requests: int = 0
    generated_tokens: int = 0
    busy_seconds: float = 0.0
    busy_before: tuple = (0.0, 0)  # busy seconds and tokens of earlier actors of this slot
    errors: list = field(default_factory=list)

    def record(self, stats: dict) -> None:
        """The running totals a replica sends with each finished unit (over this slot's earlier actors too)."""
        self.busy_seconds = self.busy_before[0] + stats["busy_seconds"]
        self.generated_tokens = self.busy_before[1] + stats["generated_tokens"]


class DataParallelExecutor:
    """N engine replicas over Ray. Starting it starts the replicas (they load while the job reads the input)."""

    def __init__(self, facts: ModelFacts, llm_kwargs: dict[str, Any], options: DataParallelOptions,
                 log=None) -> None:
        self.ray = import_ray()
        self.facts = facts
        self.options = options
        self.log = log or (lambda message: None)
        self.started_ray = False
        if not self.ray.is_initialized():
            if options.ray_address:
                self.ray.init(address=options.ray_address, log_to_driver=False)
            else:
                need = options.num_replicas * options.cpus_per_replica
                self.ray.init(num_cpus=max(os.cpu_count() or 1, int(np.ceil(need))), include_dashboard=False,
                              log_to_driver=False)
                self.started_ray = True
        self.gpus_per_replica = options.resolved_gpus(self.ray.cluster_resources().get("GPU", 0.0))
        self.llm_kwargs = replica_llm_kwargs(llm_kwargs, self.gpus_per_replica)
        self.actor_class = self.ray.remote(EngineReplica).options(
            num_cpus=options.cpus_per_replica, num_gpus=self.gpus_per_replica, max_concurrency=2, max_restarts=0)
        self.events: "queue.Queue[tuple[int, int, tuple]]" = queue.Queue()
        self.slots = [_Slot(k) for k in range(options.num_replicas)]
        self.failed_replicas = 0
        self.rerun_units = 0
        self.plan = None
        self.round_robin_prefill: Optional[int] = None
        self.round_robin: Optional[threading.Thread] = None
        self.prompt_tokens = 0
        self.first_ready = threading.Event()
        self.started: dict[tuple[int, int], ReplicaInfo] = {}  # written by the reader threads
        self.load_failures: set[tuple[int, int]] = set()  # (slot, generation) of actors that never loaded
        for slot in self.slots:
            self._start(slot)

    @classmethod
    def start(cls, model: str, options: Optional[DataParallelOptions] = None, llm_kwargs: Optional[dict] = None,
              log=None, **option_fields: Any) -> "DataParallelExecutor":
        """Replicas of ``model`` (``llm_kwargs``: the other ``LLM`` arguments of each); options as
        ``DataParallelOptions`` or its fields, e.g. ``start(model, num_replicas=4)``. Use it in a ``with``."""
        options = options or DataParallelOptions(**option_fields)
        kwargs = dict(llm_kwargs or {})
        facts = ModelFacts.load(model, kwargs.get("tokenizer"), kwargs.get("max_model_len"),
                                kwargs.get("skip_tokenizer_init", False), kwargs.get("block_size", 16))
        return cls(facts, {"model": model, **kwargs}, options, log=log)

    # ---- replicas -----------------------------------------------------------------------------
    def _start(self, slot: _Slot) -> None:
        slot.generation += 1
        slot.ready, slot.alive, slot.queued, slot.units = False, True, 0, {}
        threads = max(1, int(self.options.cpus_per_replica)) if self.gpus_per_replica == 0 else None
        slot.actor = self.actor_class.remote(self.llm_kwargs, threads)
        threading.Thread(target=self._consume, args=(slot.index, slot.generation, slot.actor), daemon=True).start()

    def _consume(self, index: int, generation: int, actor) -> None:
        """Read one actor's events into the driver's queue (a thread per actor: the driver waits on one queue)."""
        put = self.events.put
        info = None
        try:
            info = self.ray.get(actor.info.remote())
            self.started[(index, generation)] = info
            self.first_ready.set()
            put((index, generation, ("ready", info)))
            for ref in actor.stream.options(num_returns="streaming").remote():
                for event in self.ray.get(ref):
                    put((index, generation, event))
            put((index, generation, ("ended",)))
        except Exception as err:  # the actor died or could not start: Ray's error says which
            if info is None:
                self.load_failures.add((index, generation))
            put((index, generation, ("failed", err)))

    def kv_blocks(self) -> Optional[int]:
        """KV blocks of the first replica to start (waits for one)."""
        while not self.first_ready.wait(0.5):
            if len(self.load_failures) >= len(self.slots):
                return None  # none could load; execute() reports why
        return min(info.num_kv_blocks for info in list(self.started.values()))

    # ---- the run ------------------------------------------------------------------------------
    def execute(self, requests: CompactRequests, analysis) -> Iterator[tuple[int, RequestOutput]]:
        n = len(requests)
        if n == 0:
            return
        offsets = requests.offsets
        lengths = np.diff(offsets)
        # Every sample's prompt counts, as in the job's analysis: a round-robin ratio over the same total.
        self.prompt_tokens = int((lengths * requests.samples_per_request()).sum())
        budgets = np.frombuffer(requests.output_budget, dtype=np.int64)
        self.plan = plan_from_analysis(analysis, lengths, budgets, len(self.slots),
                                       units_per_replica=self.options.units_per_replica)
        # Only the summary needs it, and at a million requests it takes as long as the analysis (33 s on 2
        # cores): it runs beside the dispatch instead of before it.
        self.round_robin = threading.Thread(target=self._round_robin, args=(requests.tokens, offsets,
                                           requests.samples_per_request()), daemon=True)
        self.round_robin.start()
        units = collections.deque(_Unit(u.unit_id, u.request_ids) for u in self.plan.units)
        next_unit_id = len(units)
        by_id = {u.unit_id: u for u in units}
        written = np.zeros(n, dtype=bool)
        left = n
        self.log(f"data parallel: {len(self.slots)} replicas, {len(units)} work units "
                 f"({len(self.plan.split_groups)} prefix groups split), estimated imbalance "
                 f"{self.plan.makespan / max(self.plan.total_cost / len(self.slots), 1e-9):.3f}")
        while left:
            self._dispatch(units, requests, offsets)
            index, generation, event = self.events.get()
            slot = self.slots[index]
            if generation != slot.generation:
                continue  # from an actor this slot already replaced
            kind = event[0]
            if kind == "ready":
                slot.ready, slot.info = True, event[1]
                self.log(f"  replica {index} ready: pid {slot.info.pid} on {slot.info.node} ({slot.info.device}), "
                         f"{slot.info.num_kv_blocks:,} KV blocks")
            elif kind == "started":
                slot.queued -= 1
            elif kind == "outputs":
                unit = by_id[event[1]]
                for j, output in event[2]:
                    i = int(unit.request_ids[j])
                    if written[i]:
                        continue
                    written[i] = True
                    left -= 1
                    slot.requests += 1
                    prompt = requests.tokens[offsets[i]: offsets[i + 1]].tolist()
                    yield i, replace(output, prompt_token_ids=prompt)
            elif kind == "done":
                slot.units.pop(event[1], None)
                slot.record(event[2])
            elif kind in ("failed", "ended"):
                error = event[1] if kind == "failed" else RuntimeError("the replica's stream ended early")
                next_unit_id = self._fail(slot, error, units, by_id, written, next_unit_id)
        self._finish()

    def _finish(self, timeout: float = 30.0) -> None:
        """Every result is in: let the replicas end their streams, for their last statistics."""
        live = {s.index for s in self.slots if s.alive and s.ready}
        for index in live:
            self.slots[index].actor.close.remote()
        deadline = time.perf_counter() + timeout
        while live and time.perf_counter() < deadline:
            try:
                index, generation, event = self.events.get(timeout=max(0.0, deadline - time.perf_counter()))
            except queue.Empty:
                break
            slot = self.slots[index]
            if generation != slot.generation:
                continue
            if event[0] == "done":
                slot.record(event[2])
            elif event[0] in ("ended", "failed"):
                live.discard(index)

    def _round_robin(self, tokens: np.ndarray, offsets: np.ndarray, samples: np.ndarray) -> None:
        self.round_robin_prefill = round_robin_prefill_tokens(tokens, offsets, len(self.slots), self.facts.block_size,
                                                              samples)

    def _dispatch(self, units: collections.deque, requests: CompactRequests, offsets: np.ndarray) -> None:
        """Top up every ready replica: one unit waiting beyond what its engine runs (two when it runs none)."""
        for slot in self.slots:
            while units and slot.alive and slot.ready and (
                    slot.queued < PREFETCH_UNITS or len(slot.units) < PREFETCH_UNITS + 1):
                unit = units.popleft()
                slot.actor.submit.remote(unit.unit_id, self.ray.put(requests.select(unit.request_ids, offsets)))
                slot.units[unit.unit_id] = unit
                slot.queued += 1
        if not any(s.alive for s in self.slots):
            errors = "; ".join(e for s in self.slots for e in s.errors[-1:])
            raise RuntimeError(f"every replica failed ({self.failed_replicas} failures; last errors: {errors}); "
                               "the results received so far are written: rerun the same command to resume")

    def _fail(self, slot: _Slot, error: Exception, units: collections.deque, by_id: dict, written: np.ndarray,
              next_unit_id: int) -> int:
        """Requeue what the dead actor held (only requests without a result), then replace the actor."""
        self.failed_replicas += 1
        text = str(error).strip()
        message = f"replica {slot.index}: {type(error).__name__}: {text.splitlines()[-1][:300] if text else ''}"
        slot.errors.append(message)
        self.log(f"  {message}")
        for unit in sorted(slot.units.values(), key=lambda u: -len(u.request_ids)):
            remaining = unit.request_ids[~written[unit.request_ids]]
            if len(remaining):
                rerun = _Unit(next_unit_id, remaining, unit.unit_id)
                next_unit_id += 1
                by_id[rerun.unit_id] = rerun
                units.appendleft(rerun)
                self.rerun_units += 1
        slot.busy_before = (slot.busy_seconds, slot.generated_tokens)
        self.ray.kill(slot.actor, no_restart=True)
        slot.alive = False
        if not self.started:
            # It could not load while no replica ever has: the model or its options (the error says which),
            # not a lost machine. Retrying would fail the same way.
            return next_unit_id
        if slot.restarts < self.options.max_restarts:
            slot.restarts += 1
            self.log(f"  starting a new replica {slot.index} (restart {slot.restarts} of {self.options.max_restarts})")
            self._start(slot)
        return next_unit_id

    # ---- reporting and shutdown -------------------------------------------------------------------
    def report(self, summary: BatchSummary) -> None:
        if self.round_robin is not None:
            self.round_robin.join()
        replicas = []
        for slot in self.slots:
            rate = slot.generated_tokens / slot.busy_seconds if slot.busy_seconds else None
            replicas.append({"replica": slot.index, "requests": slot.requests, "generated_tokens": slot.generated_tokens,
                             "busy_seconds": round(slot.busy_seconds, 3),
                             "generated_tokens_per_s": None if rate is None else round(rate, 1),
                             "restarts": slot.restarts, "node": slot.info.node if slot.info else None})
        summary.data_parallel = {
            "replicas": replicas, "failed_replicas": self.failed_replicas, "rerun_units": self.rerun_units,
            "units": 0 if self.plan is None else len(self.plan.units),
            "split_groups": 0 if self.plan is None else len(self.plan.split_groups),
            "extra_prefix_tokens": 0 if self.plan is None else int(self.plan.extra_prefix_tokens),
        }
        if self.round_robin_prefill is not None:
            summary.data_parallel["round_robin_prefill_tokens"] = self.round_robin_prefill
            summary.data_parallel["round_robin_reuse_ratio"] = round(
                1 - self.round_robin_prefill / max(self.prompt_tokens, 1), 4)

    def close(self) -> None:
        for slot in self.slots:
            if slot.actor is not None:
                try:
                    self.ray.kill(slot.actor, no_restart=True)
                except Exception:  # already gone
                    pass
        if self.started_ray:
            self.ray.shutdown()

    def __enter__(self) -> "DataParallelExecutor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
