"""The function pickled to the executors: :class:`ArrowPredictor`.

Runs in Spark's Python workers. Each worker keeps its engines (one per model,
device, inputs and options; a few at most) across the tasks it runs; each task
binds to its GPU (``TaskContext.resources()["gpu"]``) or the CPU, sizes torch's
intra-op threads from ``spark.task.cpus``, streams its Arrow batches through
the engine and sends one record to the driver (see :mod:`.report`).
"""

from __future__ import annotations

import collections
import logging
import os
import re
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch

from ..distribute import ModelRef, fetch
from ..engine import Engine, size_intra_op_threads
from ..inputs import Inputs
from . import outputs as out
from .metrics import TaskMetrics
from .monitor import Settings
from .report import function_name, sample

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
    ref: ModelRef, device: torch.device, specs: Inputs, options: Mapping[str, Any]
) -> Engine:
    key = (ref, str(device), repr(specs), repr(sorted(options.items())))
    with _engines_lock:
        engine = _engines.get(key)
        if engine is not None and not engine.closed:
            _engines.move_to_end(key)
            return engine
    path = fetch(ref)
    engine = Engine(path, device=device, inputs=specs, **options)
    with _engines_lock:
        _engines[key] = engine
        while len(_engines) > _MAX_CACHED:
            _, old = _engines.popitem(last=False)
            old.close()
    return engine


logger = logging.getLogger("torchspark")
_env_level: list[str | None] = [None]  # the TORCHSPARK_LOG_LEVEL applied to the logger


def _configure_logger() -> None:
    """``TORCHSPARK_LOG_LEVEL`` (e.g. ``INFO``), where set, is the ``torchspark``
    logger's level; if nothing handles its records yet (an executor's Python
    worker, say), they go to stderr, which Spark keeps in the executor's log.
    Unset, logging's own configuration decides (INFO lines are not shown)."""
    value = os.environ.get("TORCHSPARK_LOG_LEVEL")
    if not value or value == _env_level[0]:
        return
    _env_level[0] = value
    try:
        logger.setLevel(value.upper())
    except ValueError:
        return
    if not logger.hasHandlers():
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("torchspark: %(message)s"))
        logger.addHandler(handler)


# Where an engine error points inside its request (the Arrow batch): a row
# ("(first in row 7)", "null values in row 7") before a batch's range
# ("request 0 rows [0, 64)"): a bad value inside a failed batch names its row.
_ROW = re.compile(r"\(first in row (\d+)\)|null values in row (\d+)")
_ROWS = re.compile(r"request \d+ rows \[(\d+), (\d+)\)")


def _locate(error: BaseException, batch: Any, index: int, where: str, label: str | None) -> None:
    """Add to ``error``'s message where it happened: the task, the Arrow batch,
    the row and its ``label`` column's value (usually the id), so that a
    user can find the row. The exception stays the same object (same type and
    traceback): Spark shows the engine's error first."""
    if len(error.args) != 1 or not isinstance(error.args[0], str):
        return
    text = error.args[0]
    match = _ROW.search(text) or _ROWS.search(text)
    rows = batch.num_rows
    at = f"{where}, Arrow batch {index} ({rows} rows)"
    if match is not None:
        groups = [g for g in match.groups() if g is not None]
        row = int(groups[0])
        single = len(groups) == 1
        at += f", row {row}" if single else f", rows [{groups[0]}, {groups[1]})"
        if label is not None and 0 <= row < rows:
            try:
                value = batch.column(label)[row].as_py()
                at += f" ({'' if single else 'first: '}{label}={value!r})"
            except Exception:  # a label is a courtesy: never mask the error
                pass
    error.args = (f"{text} [at {at}]",)


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
        specs: Inputs,
        keep: list[str],
        outputs: list[str] | None,
        schema: Any,
        device: str,
        options: dict[str, Any],
        run: str | None = None,
        records: Any = None,
        label: str | None = None,
        monitor: Settings | None = None,
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
        self.monitor = monitor  # live metrics and progress; None: off
        # The column whose value names a failing row: the first kept one by default.
        self.label = label if label is not None else (keep[0] if keep else None)
        if run is not None:
            self.__name__ = function_name(run)  # what Spark calls it in plans (see .report)

    def __call__(self, batches: Iterable[Any]) -> Iterator[Any]:
        from pyspark import TaskContext

        _configure_logger()
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
        stats = new_stats()
        output = self.outputs if self.outputs is not None else "_out"
        # Live metrics and progress (.monitor): None when off.
        metrics = TaskMetrics.start(self.monitor, engine, self.ref, device, task, stats)
        on_batch = metrics.on_batch if metrics is not None else None
        try:
            fed = metrics.feed(batches) if metrics is not None else batches
            yield from score(engine, fed, self.keep, output, where, self.label, stats, on_batch)
        finally:
            if metrics is not None:
                metrics.finish()
            try:
                execution = (
                    task.getLocalProperty("spark.sql.execution.id") if task is not None else None
                )
                fields = {
                    "run": self.run,
                    "execution": int(execution) if execution else None,
                    "stage": task.stageId() if task is not None else -1,
                    "partition": task.partitionId() if task is not None else -1,
                    "attempt": task.attemptNumber() if task is not None else 0,
                }
                record = task_record(fields, self.ref, engine, device, where, stats)
                if self._records is not None:
                    self._records.add([record])
            except Exception as bookkeeping:  # never in place of the task's own outcome
                logger.warning("%s: the task's record was lost: %s", where, bookkeeping)


def new_stats() -> dict[str, Any]:
    """The counters :func:`score` fills, started now."""
    return {
        "rows": 0,
        "arrow_batches": 0,
        "latency_ms": [],
        "start": time.time(),
        "model_calls": 0,
        "rows_truncated": 0,
        "token_budget": 0,
        "error": None,
    }


def score(
    engine: Engine,
    batches: Iterable[Any],
    keep: list[str],
    output: str | Sequence[str],
    where: str,
    label: str | None,
    stats: dict[str, Any],
    on_batch: Callable[[Any, Any, float], None] | None = None,
) -> Iterator[Any]:
    """One output batch per Arrow batch of ``batches``, streamed through
    ``engine``: the ``keep`` columns (zero-copy) and one column per model
    output, named by ``output`` (see :func:`.outputs.output_names`).

    Fills ``stats`` (from :func:`new_stats`) as it goes and, however it ends
    (done, failed, closed early), with the engine's counts and the error. An
    error names where it happened (``where``, the Arrow batch, the row and its
    ``label`` value: :func:`_locate`).
    """
    before = engine.stats()
    # Fed to the engine, outputs not yet out: (batch, index in the task, fed at).
    pending: collections.deque[tuple[Any, int, float]] = collections.deque()
    taken = [True]  # whether the engine took the last batch fed (its submit returned)

    def feed() -> Iterator[Any]:
        for index, batch in enumerate(batches):
            pending.append((batch, index, time.perf_counter()))
            taken[0] = False
            yield batch
            taken[0] = True

    try:
        for result in engine.map(feed()):
            batch, _, submitted = pending.popleft()
            names, tensors = out.flatten(result)
            outputs = out.output_names(output, names, len(tensors))
            seconds = time.perf_counter() - submitted
            stats["latency_ms"].append(seconds * 1e3)
            stats["rows"] += batch.num_rows
            stats["arrow_batches"] += 1
            scored = out.record_batch(batch, keep, outputs, tensors)
            if on_batch is not None:
                on_batch(batch, scored, seconds)
            yield scored
    except Exception as e:
        # Raised when submitting the newest batch, or when collecting the
        # oldest one's outputs.
        if pending:
            batch, index, _ = pending[-1] if not taken[0] else pending[0]
            _locate(e, batch, index, where, label)
        stats["error"] = f"{type(e).__name__}: {e}"
        raise
    except BaseException as e:
        stats["error"] = f"{type(e).__name__}: {e}"
        raise
    finally:
        try:
            after = engine.stats()
            stats["model_calls"] = after["batches"] - before["batches"]
            stats["rows_truncated"] = after["rows_truncated"] - before["rows_truncated"]
            padded = engine._feed is not None and engine._feed.padded
            stats["token_budget"] = after["token_budget"] if padded else 0
        except Exception as bookkeeping:  # never in place of the task's own outcome
            logger.warning("%s: the engine's counts were lost: %s", where, bookkeeping)


def task_record(
    fields: Mapping[str, Any],
    ref: ModelRef,
    engine: Engine,
    device: torch.device,
    where: str,
    stats: dict[str, Any],
) -> dict[str, Any]:
    """A task's record for its :class:`.report.Report` (``fields``: where it
    ran, then what :func:`score` counted), and its line to the log."""
    end = time.time()
    error = stats["error"]
    record = {
        **fields,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "model": ref.name,
        "format": engine.model.format,
        "device": str(device),
        "batch_size": engine.batch_size,
        "intra_op_threads": torch.get_num_threads(),
        **stats,
        "end": end,
        "latency_ms": sample(stats["latency_ms"]),
    }
    logger.info(
        "%s: model '%s' (%s) on %s, batch_size %d, intra-op threads %d: "
        "%d rows in %d Arrow batches, %.3f s%s",
        where,
        ref.name,
        engine.model.format,
        device,
        engine.batch_size,
        torch.get_num_threads(),
        stats["rows"],
        stats["arrow_batches"],
        end - stats["start"],
        f"; failed: {error}" if error else "",
    )
    return record
