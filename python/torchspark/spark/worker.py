"""The function pickled to the executors: :class:`ArrowPredictor`.

Runs in Spark's Python workers. Each worker keeps its engines (one per model,
device, inputs and options; a few at most) across the tasks it runs; each task
binds to its GPU (``TaskContext.resources()["gpu"]``) or the CPU, sizes torch's
intra-op threads from ``spark.task.cpus``, streams its Arrow batches through
the engine and sends one record to the driver (see :mod:`.report`). Where
the task shares its executor's engine (``share``, :mod:`.shared`), the engine
is a connection to that process (:class:`.shared.client.SharedEngine`) and
the rest of the task runs the same way.
"""

from __future__ import annotations

import collections
import logging
import os
import re
import socket
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch

from ..distribute import ModelRef, fetch
from ..engine import Engine, size_intra_op_threads
from ..errors import BadRowsError, EngineClosedError
from ..inputs import Inputs
from . import outputs as out
from . import quarantine
from .bad_rows import (
    RAISE,
    BadRowLog,
    BadRowPolicy,
    Segment,
    assemble,
    count_nonfinite,
    isolate,
    nonfinite_error,
    split_nonfinite,
)
from .batch_observer import BatchObserver
from .engine_cache import EngineCache
from .metrics import TaskMetrics
from .monitor import Settings
from .report import function_name, sample
from .shared.attach import executor_engine
from .shared.client import SharedEngine
from .shared.mode import Sharing

_engines = EngineCache(4)  # per model, device, inputs and options: a few at most


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
    return _engines.get(key, lambda: Engine(fetch(ref), device=device, inputs=specs, **options))


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


def _request_rows(text: str, request: Any) -> re.Match[str] | None:
    """The rows of request ``request`` in an engine error's ``text``."""
    if not isinstance(request, int):
        return None
    return re.search(rf"request {request} rows \[(\d+), (\d+)\)", text)


def _locate(error: BaseException, batch: Any, index: int, where: str, label: str | None) -> None:
    """Add to ``error``'s message where it happened: the task, the Arrow batch,
    the row and its ``label`` column's value (usually the id), so that a
    user can find the row. The exception stays the same object (same type and
    traceback): Spark shows the engine's error first."""
    if len(error.args) != 1 or not isinstance(error.args[0], str):
        return
    text = error.args[0]
    # A batch's error lists each of its requests' rows: this request's (a
    # batch may hold other Arrow batches, or other tasks' on a shared engine).
    request = getattr(error, "torchspark_request", None)
    match = _ROW.search(text) or _request_rows(text, request) or _ROWS.search(text)
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
        policy: BadRowPolicy = RAISE,
        output_types: list[Any] | None = None,
        input_stats: bool = False,
        monitor: Settings | None = None,
        share: Sharing | None = None,
    ) -> None:
        self.ref = ref
        self.share = share  # where the engine lives (see .shared.mode); None: in the task
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
        self.policy = policy
        self.output_types = output_types  # Spark types of the outputs (for bad rows)
        self.input_stats = input_stats  # statistics of the numeric input columns too
        if run is not None:
            self.__name__ = function_name(run)  # what Spark calls it in plans (see .report)

    def __call__(self, batches: Iterable[Any]) -> Iterator[Any]:
        from pyspark import TaskContext

        _configure_logger()
        task = TaskContext.get()
        device = _task_device(self.device)
        cpus = task.cpus() if task is not None else None
        shared = self.share is not None and self.share.shared(device)
        if not shared and device.type == "cpu":
            # spark.task.cpus cores per task, one Python worker per task.
            size_intra_op_threads(1, self.options.get("intra_op_threads") or cpus)
        where = (
            f"stage {task.stageId()} partition {task.partitionId()} attempt {task.attemptNumber()}"
            if task is not None
            else "driver"
        )
        stats = new_stats()
        engine: Engine | SharedEngine
        try:
            if shared:
                engine = executor_engine(self.ref, device, self.specs, self.options, self.share)
            else:
                engine = _cached_engine(self.ref, device, self.specs, self.options)
        except BaseException as e:  # the model did not load: the task's record says why
            stats["error"] = f"{type(e).__name__}: {e}"
            self._send_record(task, None, device, where, stats, shared)
            raise
        output = self.outputs if self.outputs is not None else "_out"
        columns = [c for s in _input_list(self.specs) for c in s.column_list]
        observe = BatchObserver(self.keep, columns if self.input_stats else [], stats)
        log = BadRowLog(self.policy, where, self.label)
        # Live metrics and progress (.monitor): None when off.
        metrics = TaskMetrics.start(self.monitor, engine, self.ref, device, task, stats)

        def on_batch(batch: Any, scored: Any, seconds: float) -> None:
            observe(batch, scored, seconds)
            if metrics is not None:
                metrics.on_batch(batch, scored, seconds)

        try:
            fed = metrics.feed(batches) if metrics is not None else batches
            yield from score(
                engine,
                fed,
                self.keep,
                output,
                where,
                self.label,
                stats,
                on_batch,
                policy=self.policy,
                output_types=self.output_types,
                bad_rows=log,
            )
            if log.set_aside:
                self._set_aside(log, task, stats, where)
        finally:
            if metrics is not None:
                metrics.finish()
            self._send_record(task, engine, device, where, stats, shared)

    def _send_record(
        self,
        task: Any,
        engine: Engine | SharedEngine | None,
        device: torch.device,
        where: str,
        stats: dict[str, Any],
        shared: bool,
    ) -> None:
        """The task's record to the driver (see .report); never raises."""
        try:
            execution = None if task is None else task.getLocalProperty("spark.sql.execution.id")
            fields = {
                "run": self.run,
                "execution": int(execution) if execution else None,
                "stage": task.stageId() if task is not None else -1,
                "partition": task.partitionId() if task is not None else -1,
                "attempt": task.attemptNumber() if task is not None else 0,
                "share": "executor" if shared else "task",
                "engine_pid": getattr(engine, "pid", None) if shared else os.getpid(),
            }
            record = task_record(fields, self.ref, engine, device, where, stats)
            if self._records is not None:
                self._records.add([record])
        except Exception as bookkeeping:  # never in place of the task's own outcome
            logger.warning("%s: the task's record was lost: %s", where, bookkeeping)

    def _set_aside(self, log: BadRowLog, task: Any, stats: dict[str, Any], where: str) -> None:
        """Writes the task's quarantined rows to the quarantine directory, or
        puts them in its record for the driver (see :mod:`.quarantine`)."""
        partition = task.partitionId() if task is not None else 0
        directory = self.policy.quarantine
        if directory is not None:
            name = quarantine.file_name(partition, self.run)
            stats["quarantine_file"] = quarantine.write_parquet(directory, name, log.set_aside)
        else:
            stats["quarantined"] = quarantine.to_bytes(log.set_aside, where)


def _input_list(specs: Inputs) -> list[Any]:
    if isinstance(specs, Mapping):
        return list(specs.values())
    return list(specs) if isinstance(specs, Sequence) else [specs]


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
        "bad_rows": 0,
        "bad_row_reasons": {},
        "bad_row_examples": [],
        "nonfinite": {},  # per output: rows with a NaN or Inf
        "output_stats": {},  # column -> drift.ColumnStats (filled by BatchObserver)
        "input_stats": {},
        "timeline": [],  # (seconds since start, rows so far) per output batch, bounded
    }


def score(
    engine: Engine | SharedEngine,
    batches: Iterable[Any],
    keep: list[str],
    output: str | Sequence[str],
    where: str,
    label: str | None,
    stats: dict[str, Any],
    on_batch: Callable[[Any, Any, float], None] | None = None,
    policy: BadRowPolicy = RAISE,
    output_types: list[Any] | None = None,
    bad_rows: BadRowLog | None = None,
) -> Iterator[Any]:
    """One output batch per Arrow batch of ``batches``, streamed through
    ``engine``: the ``keep`` columns (zero-copy) and one column per model
    output, named by ``output`` (see :func:`.outputs.output_names`).

    Fills ``stats`` (from :func:`new_stats`) as it goes and, however it ends
    (done, failed, closed early), with the engine's counts and the error. An
    error names where it happened (``where``, the Arrow batch, the row and its
    ``label`` value: :func:`_locate`). ``on_batch(input batch, output batch,
    seconds from submit to outputs)``, where given, sees each output batch
    before it is yielded (metrics, output statistics).

    With a ``policy`` that isolates bad rows (see :mod:`.bad_rows`), a failed
    batch is bisected on a sibling engine; its bad rows get null outputs and
    an error, or are left out and kept in ``bad_rows`` (a
    :class:`.bad_rows.BadRowLog`, made here if not given) to be set aside;
    ``output_types`` (the outputs' Spark types) type a batch with no scored row.
    """
    before = engine.stats()
    log = bad_rows if bad_rows is not None else BadRowLog(policy, where, label)
    # Fed to the engine, outputs not yet out: (batch, index in the task, fed at).
    pending: collections.deque[tuple[Any, int, float]] = collections.deque()
    taken = [True]  # whether the engine took the last batch fed (its submit returned)
    current: list[tuple[Any, int] | None] = [None]  # the batch being finished, if any
    sibling: list[Engine | SharedEngine] = []  # isolates bad rows; made at the first failure

    def feed() -> Iterator[Any]:
        for index, batch in enumerate(batches):
            pending.append((batch, index, time.perf_counter()))
            taken[0] = False
            yield batch
            taken[0] = True

    def isolated(batch: Any, index: int, error: Exception) -> list[Segment]:
        if isinstance(error, EngineClosedError):
            raise error
        if not sibling:
            sibling.append(engine.sibling(max_delay_ms=0.0, inflight=1, threads=1))
        return isolate(sibling[0].run, batch, error, lambda found: log.segment(batch, index, found))

    def nonfinite_bad(
        batch: Any, index: int, segments: list[Segment], names: list[str]
    ) -> list[Segment]:
        """check_finite: rows with NaN or Inf outputs made bad rows (they were
        counted as scored)."""
        before = {id(s) for s in segments}
        refined = split_nonfinite(segments, names)
        for segment in refined:
            if segment.error is not None and id(segment) not in before:
                log.segment(batch, index, segment, was_scored=True)
        return refined

    try:
        # Every outcome in order, failures included, so that an error is
        # pinned to its own Arrow batch (not to the newest one fed).
        for result in engine.map(feed(), return_exceptions=True):
            batch, index, submitted = pending.popleft()
            current[0] = (batch, index)
            if isinstance(result, Exception):
                if not policy.isolates:
                    raise result
                segments = isolated(batch, index, result)
                names = next((s.outputs[0] for s in segments if s.outputs), None)
            else:
                names, tensors = out.flatten(result)
                segments = None
            count = len(names) if names is not None else len(output_types or ())
            outputs = out.output_names(output, names or [""] * count, count)
            if segments is None:
                masks = count_nonfinite(outputs, tensors, stats["nonfinite"])
                flagged = [(n, m) for n, m in zip(outputs, masks, strict=True) if m is not None]
                if flagged and policy.check_finite:
                    if not policy.isolates:
                        name, mask = flagged[0]
                        first = int(torch.nonzero(mask)[0])
                        raise nonfinite_error(name, int(mask.sum()), first)
                    segments = [Segment(0, batch.num_rows, (names, tensors))]
                log.scored_rows(batch.num_rows)
            else:
                for segment in segments:
                    if segment.outputs is not None:
                        count_nonfinite(outputs, segment.outputs[1], stats["nonfinite"])
            if segments is None:
                scored = out.record_batch(batch, keep, outputs, tensors)
                if policy.error_column_added is not None:
                    scored = scored.append_column(
                        policy.error_column_added, _no_errors(batch.num_rows)
                    )
            else:
                if policy.check_finite:
                    segments = nonfinite_bad(batch, index, segments, outputs)
                types = _arrow_types(output_types, count)
                scored, set_aside = assemble(batch, keep, outputs, segments, policy, types)
                log.keep(set_aside)
            stats["bad_rows"] = log.count  # live: metrics read it as the task goes
            seconds = time.perf_counter() - submitted
            stats["latency_ms"].append(seconds * 1e3)
            stats["rows"] += batch.num_rows
            stats["arrow_batches"] += 1
            current[0] = None
            if scored is None:
                continue  # every row set aside
            if on_batch is not None:
                on_batch(batch, scored, seconds)
            yield scored
        log.finish(stats["rows"])
    except Exception as e:
        # Raised when submitting the newest batch, when collecting the oldest
        # one's outputs, or when finishing a batch's outputs.
        if isinstance(e, BadRowsError):
            pass  # names its rows itself
        elif current[0] is not None:
            _locate(e, *current[0], where, label)
        elif pending:
            batch, index, _ = pending[-1] if not taken[0] else pending[0]
            _locate(e, batch, index, where, label)
        stats["error"] = f"{type(e).__name__}: {e}"
        raise
    except BaseException as e:
        stats["error"] = f"{type(e).__name__}: {e}"
        raise
    finally:
        stats["bad_rows"] = log.count
        stats["bad_row_reasons"] = dict(log.reasons)
        stats["bad_row_examples"] = list(log.examples)
        for extra in sibling:
            extra.close()
        try:
            after = engine.stats()
            stats["model_calls"] = after["batches"] - before["batches"]
            stats["rows_truncated"] = after["rows_truncated"] - before["rows_truncated"]
            padded = engine.padded
            stats["token_budget"] = after["token_budget"] if padded else 0
        except Exception as bookkeeping:  # never in place of the task's own outcome
            logger.warning("%s: the engine's counts were lost: %s", where, bookkeeping)


def _no_errors(rows: int) -> Any:
    """The error column of a batch whose rows all scored: ``rows`` null strings."""
    import pyarrow as pa

    return pa.nulls(rows, pa.string())


def _arrow_types(spark_types: list[Any] | None, count: int) -> list[Any]:
    """The outputs' Arrow types from their Spark types (null where unknown),
    lists with ``item`` children as outputs.record_batch makes them."""
    import pyarrow as pa

    if not spark_types or len(spark_types) != count:
        return [pa.null()] * count
    from pyspark.sql.pandas.types import to_arrow_type

    def items(kind: Any) -> Any:
        return pa.list_(items(kind.value_type)) if pa.types.is_list(kind) else kind

    return [items(to_arrow_type(t)) for t in spark_types]


def task_record(
    fields: Mapping[str, Any],
    ref: ModelRef,
    engine: Engine | SharedEngine | None,
    device: torch.device,
    where: str,
    stats: dict[str, Any],
) -> dict[str, Any]:
    """A task's record for its :class:`.report.Report` (``fields``: where it
    ran, then what :func:`score` counted), and its line to the log. Without
    an ``engine`` (the model did not load) its format and batch size are None."""
    end = time.time()
    error = stats["error"]
    model_format = engine.model.format if engine is not None else None
    batch_size = engine.batch_size if engine is not None else None
    # The threads the model's calls ran with: the shared engine's own, else this process's.
    threads = engine.intra_op_threads if engine is not None else torch.get_num_threads()
    record = {
        **fields,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "model": ref.name,
        "format": model_format,
        "device": str(device),
        "batch_size": batch_size,
        "intra_op_threads": threads,
        **stats,
        "end": end,
        "latency_ms": sample(stats["latency_ms"]),
    }
    logger.info(
        "%s: model '%s' (%s) on %s, batch_size %s, intra-op threads %d: "
        "%d rows in %d Arrow batches, %.3f s%s",
        where,
        ref.name,
        model_format,
        device,
        batch_size,
        threads,
        stats["rows"],
        stats["arrow_batches"],
        end - stats["start"],
        f"; failed: {error}" if error else "",
    )
    return record
