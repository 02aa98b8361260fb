"""The function pickled to the executors: :class:`ArrowPredictor`.

Runs in Spark's Python workers. Each worker keeps its engines (one per model,
device, inputs and options; a few at most) across the tasks it runs; each task
binds to its GPU (``TaskContext.resources()["gpu"]``) or the CPU, sizes torch's
intra-op threads from ``spark.task.cpus``, streams its Arrow batches through
the engine and sends one record to the driver (see :mod:`.report`).
"""

from __future__ import annotations

import collections
import os
import socket
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch

from ..distribute import ModelRef, fetch
from ..engine import Engine, Input, size_intra_op_threads
from . import outputs as out
from .report import sample

_engines: collections.OrderedDict[tuple[Any, ...], Engine] = collections.OrderedDict()
_engines_lock = threading.Lock()
_MAX_CACHED = 4


def _task_device(device: str) -> torch.device:
    from pyspark import TaskContext

    if device != "auto":
        return torch.device(device)
    task = TaskContext.get()
    gpus = task.resources().get("gpu") if task is not None else None
    if gpus is not None and gpus.addresses:
        accelerator = torch.accelerator.current_accelerator()
        if accelerator is not None and torch.accelerator.device_count() > 0:
            return torch.device(accelerator.type, int(gpus.addresses[0]))
    from ..engine import _resolve_device

    return _resolve_device("auto")


def _cached_engine(
    ref: ModelRef, device: torch.device, specs: Sequence[Input], options: Mapping[str, Any]
) -> Engine:
    key = (ref, str(device), repr(list(specs)), repr(sorted(options.items())))
    with _engines_lock:
        engine = _engines.get(key)
        if engine is not None and not engine.closed:
            _engines.move_to_end(key)
            return engine
    path = fetch(ref)
    engine = Engine(path, device=device, inputs=list(specs), **options)
    with _engines_lock:
        _engines[key] = engine
        while len(_engines) > _MAX_CACHED:
            _, old = _engines.popitem(last=False)
            old.close()
    return engine


def _log(message: str) -> None:
    level = os.environ.get("TORCHSPARK_LOG_LEVEL", "INFO").upper()
    if level in ("INFO", "DEBUG"):
        print(f"torchspark: {message}", file=sys.stderr, flush=True)


def _record_batch(arrays: list[Any], names: list[str]) -> Any:
    import pyarrow as pa

    return pa.RecordBatch.from_arrays(arrays, names=names)


class ArrowPredictor:
    """The function to hand to ``df.mapInArrow(predictor, predictor.schema)``.

    Made by :func:`arrow_predictor` (or inside :func:`predict`). Pickled to the
    executors; each Python worker loads the model once and reuses it across
    tasks. Yields one output batch per input batch: the ``keep`` columns
    (zero-copy) and one column per model output.
    """

    def __init__(
        self,
        ref: ModelRef,
        specs: list[Input],
        keep: list[str],
        outputs: list[str] | None,
        schema: Any,
        device: str,
        options: dict[str, Any],
        run: str | None = None,
        records: Any = None,
    ) -> None:
        self.ref = ref
        self.specs = specs
        self.keep = keep
        self.outputs = outputs
        self.schema = schema
        self.device = device
        self.options = options
        self.run = run
        self._records = records

    def __call__(self, batches: Iterable[Any]) -> Iterator[Any]:
        from pyspark import TaskContext

        task = TaskContext.get()
        device = _task_device(self.device)
        cpus = task.cpus() if task is not None else None
        if device.type == "cpu":
            # spark.task.cpus cores per task, one Python worker per task.
            size_intra_op_threads(1, self.options.get("intra_op_threads") or cpus)
        engine = _cached_engine(self.ref, device, self.specs, self.options)
        where = (
            f"stage {task.stageId()} partition {task.partitionId()} attempt {task.attemptNumber()}"
            if task is not None
            else "driver"
        )
        calls_before = engine.stats()["batches"]
        pending: collections.deque[tuple[Any, float]] = collections.deque()
        latencies: list[float] = []
        rows = 0
        count = 0
        start = time.time()
        error: str | None = None

        def feed() -> Iterator[Any]:
            for batch in batches:
                pending.append((batch, time.perf_counter()))
                yield batch

        try:
            for result in engine.map(feed()):
                batch, submitted = pending.popleft()
                names, tensors = out.flatten(result)
                arrays = [batch.column(name) for name in self.keep]
                arrays += [out.to_arrow(t) for t in tensors]
                outputs = self.outputs or out.output_names("_out", names, len(tensors))
                latencies.append((time.perf_counter() - submitted) * 1e3)
                rows += batch.num_rows
                count += 1
                yield _record_batch(arrays, self.keep + outputs)
        except BaseException as e:
            error = f"{type(e).__name__}: {e}"
            raise
        finally:
            end = time.time()
            record = {
                "run": self.run,
                "stage": task.stageId() if task is not None else -1,
                "partition": task.partitionId() if task is not None else -1,
                "attempt": task.attemptNumber() if task is not None else 0,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "model": self.ref.name,
                "format": engine.model.format,
                "device": str(device),
                "batch_size": engine.batch_size,
                "intra_op_threads": torch.get_num_threads(),
                "rows": rows,
                "arrow_batches": count,
                "model_calls": engine.stats()["batches"] - calls_before,
                "start": start,
                "end": end,
                "latency_ms": sample(latencies),
                "error": error,
            }
            _log(
                f"{where}: model '{self.ref.name}' ({engine.model.format}) on {device}, "
                f"batch_size {engine.batch_size}, intra-op threads {torch.get_num_threads()}: "
                f"{rows} rows in {count} Arrow batches, {end - start:.3f} s"
                + (f"; failed: {error}" if error else "")
            )
            if self._records is not None:
                self._records.add([record])
