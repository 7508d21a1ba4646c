"""One data-parallel replica: a Ray actor that loads the model once and runs work units fed by the driver.

The driver ``submit``s units (a ``RequestSlice`` each, through Ray's object store) and reads one
``stream`` per replica. Units go into the engine through ``LLM.run_stream``, which takes the next unit as
soon as every request of the previous ones is admitted, so the GPU stays full across unit boundaries. The
stream sends events in small batches: ``("started", unit)`` when the engine takes a unit (the driver then
sends another, so one is always waiting here), ``("outputs", unit, [(index, output), ...])`` and
``("done", unit, stats)``. Outputs travel without their prompt ids (the driver has them).
"""

from __future__ import annotations

import os
import queue
import threading
import time
from dataclasses import dataclass, replace
from typing import Any, Iterator, Optional

from batchllm.batch.store import RequestSlice

FLUSH_SECONDS = 0.25  # longest an output waits in the replica before it is sent (the driver writes it then)


@dataclass(frozen=True)
class ReplicaInfo:
    pid: int
    node: str
    num_kv_blocks: int
    device: str


class EngineReplica:
    """The actor's class (Ray wraps it in ``distributed.dispatch``); usable without Ray in tests."""

    def __init__(self, llm_kwargs: dict[str, Any], cpu_threads: Optional[int] = None) -> None:
        import torch

        from batchllm.llm import LLM

        if cpu_threads:
            torch.set_num_threads(cpu_threads)
        self.llm = LLM(**llm_kwargs)
        self.units: "queue.Queue[Optional[tuple[int, RequestSlice]]]" = queue.Queue()
        self.closed = threading.Event()

    def info(self) -> ReplicaInfo:
        import socket

        return ReplicaInfo(os.getpid(), socket.gethostname(), self.llm.num_kv_blocks, str(self.llm.config.device))

    def submit(self, unit_id: int, work: RequestSlice) -> None:
        self.units.put((unit_id, work))

    def close(self) -> None:
        """No more units: the stream ends once the engine has finished the ones it has."""
        self.units.put(None)

    def stream(self) -> Iterator[list[tuple]]:
        events: list[tuple] = []
        unit_of_batch: list[int] = []
        left: dict[int, int] = {}
        outputs: dict[int, list] = {}
        busy = 0.0
        busy_since = time.perf_counter()

        def next_batch(wait: bool):
            nonlocal busy, busy_since
            if self.closed.is_set():
                return None  # no more units: the engine finishes what it has, then the stream ends
            if wait:
                busy += time.perf_counter() - busy_since
            try:
                item = self.units.get(block=wait)
            except queue.Empty:
                return None
            if wait:
                busy_since = time.perf_counter()
            if item is None:
                self.closed.set()  # seen while the engine still runs: remembered for when it is idle
                return None
            unit_id, work = item
            unit_of_batch.append(unit_id)
            left[unit_id] = len(work)
            outputs[unit_id] = []
            events.append(("started", unit_id))
            return work.encoded(), work.params_list()

        last_flush = time.perf_counter()
        generated = 0
        for number, index, output in self.llm.run_stream(next_batch):
            unit_id = unit_of_batch[number]
            outputs[unit_id].append((index, replace(output, prompt_token_ids=[])))
            generated += sum(len(c.token_ids) for c in output.outputs)  # n samples: every one's tokens
            left[unit_id] -= 1
            if left[unit_id] == 0:
                events.append(("outputs", unit_id, outputs.pop(unit_id)))
                elapsed = busy + time.perf_counter() - busy_since
                events.append(("done", unit_id, {"busy_seconds": elapsed, "generated_tokens": generated}))
                del left[unit_id]
            now = time.perf_counter()
            if events or now - last_flush >= FLUSH_SECONDS:
                for pending_unit, pending in outputs.items():
                    if pending:
                        events.append(("outputs", pending_unit, pending))
                        outputs[pending_unit] = []
                if events:
                    yield events
                    events = []
                last_flush = now
        if events:
            yield events
