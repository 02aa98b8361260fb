"""Prometheus metrics of the engines, kept by each Python worker: :class:`TaskMetrics`.

Names in the style of Triton's and TEI's, prefixed ``torchspark_``, labelled
by ``application``, ``executor``, ``model``, ``model_digest`` and ``device``:

=========================================== ==========================================
``torchspark_request_success_total``         Arrow batches scored
``torchspark_request_failure_total``         Arrow batches that failed (their task failed)
``torchspark_rows_success_total``            rows scored
``torchspark_rows_failure_total``            rows of the Arrow batches that failed
``torchspark_rows_quarantined_total``        bad rows set aside (or given null outputs)
``torchspark_output_nonfinite_total``        NaN/Inf output values, by ``output``
``torchspark_batch_rows``                    histogram: rows per model call
``torchspark_queue_duration_seconds``        histogram: submit to staging, per piece
``torchspark_stage_duration_seconds``        histogram: staging (gather, pad, decode) per batch
``torchspark_compute_duration_seconds``      histogram: one model call (with device copies)
``torchspark_request_duration_seconds``      histogram: an Arrow batch, submit to outputs
``torchspark_padding_ratio``                 padded slots / all slots of padded inputs
``torchspark_device_memory_bytes``           accelerator memory allocated (not on the CPU)
=========================================== ==========================================

The engine counts every model call natively, in fixed buckets
(``Engine.histograms()``): nothing crosses into Python per call. A task adds
to its figures per Arrow batch (a few integer additions) and, at most once a
second and at its end, writes what changed to the metrics of its executor
(prometheus_client's multiprocess mode: files in one directory per executor,
served by :mod:`.metrics_server`) and sends its figures so far to the driver
(:mod:`.live`). With metrics off nothing here imports prometheus_client.
"""

from __future__ import annotations

import bisect
import logging
import math
import os
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from . import metrics_server
from .executor import identify

logger = logging.getLogger("torchspark")

LABELS = ("application", "executor", "model", "model_digest", "device")
FLUSH_S = 1.0  # at most one write and one datagram per task per second
_NATIVE = ("queue", "stage", "compute", "batch_rows")  # histograms from the engine


def directory(base: str | None, application: str, executor: str) -> str:
    """The metrics directory of one executor of one application."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in f"{application}-{executor}")
    return os.path.join(base or os.path.join(tempfile.gettempdir(), "torchspark-metrics"), safe)


def activate(path: str) -> None:
    """Make this process's metrics multiprocess ones, written under ``path``.

    prometheus_client picks its value class from ``PROMETHEUS_MULTIPROC_DIR``
    when it is first imported: set it first; if the process imported it before
    (user code), switch the class, as it would have been chosen."""
    os.makedirs(path, exist_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    from prometheus_client import values

    if values.ValueClass is values.MutexValue:
        values.ValueClass = values.MultiProcessValue()


class _Instruments:
    """The process's instruments (registered nowhere: the files are the registry)."""

    def __init__(self, latency_bounds: list[float], rows_bounds: list[float]) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        def counter(name: str, help: str, extra: tuple[str, ...] = ()) -> Any:
            return Counter(f"torchspark_{name}", help, LABELS + extra, registry=None)

        def histogram(name: str, help: str, bounds: list[float]) -> Any:
            return Histogram(f"torchspark_{name}", help, LABELS, registry=None, buckets=bounds)

        self.request_success = counter("request_success", "Arrow batches scored")
        self.request_failure = counter("request_failure", "Arrow batches that failed")
        self.rows_success = counter("rows_success", "Rows scored")
        self.rows_failure = counter("rows_failure", "Rows of the Arrow batches that failed")
        self.rows_quarantined = counter("rows_quarantined", "Bad rows set aside or nulled")
        self.nonfinite = counter("output_nonfinite", "NaN or Inf output values", ("output",))
        self.histograms = {
            "batch_rows": histogram("batch_rows", "Rows per model call", rows_bounds),
            "queue": histogram(
                "queue_duration_seconds", "Submit to staging, per piece", latency_bounds
            ),
            "stage": histogram(
                "stage_duration_seconds",
                "Staging one batch (convert, tokenize, decode)",
                latency_bounds,
            ),
            "compute": histogram(
                "compute_duration_seconds",
                "One model call, device copies included",
                latency_bounds,
            ),
            "request": histogram(
                "request_duration_seconds", "An Arrow batch, submit to outputs", latency_bounds
            ),
        }
        self.padding = Gauge(
            "torchspark_padding_ratio",
            "Padded slots / all slots of padded inputs",
            LABELS,
            registry=None,
            multiprocess_mode="livemostrecent",
        )
        self.memory = Gauge(
            "torchspark_device_memory_bytes",
            "Accelerator memory allocated",
            LABELS,
            registry=None,
            multiprocess_mode="livesum",
        )

        # Output statistics (drift.ColumnStats of each output column), as totals a
        # process keeps over its tasks: summed (or min/max) over processes, so
        # mean = sum / values and std = sqrt(squares / values - mean^2) in PromQL.
        def output(name: str, help: str, mode: str) -> Any:
            return Gauge(
                f"torchspark_output_{name}",
                help,
                (*LABELS, "output"),
                registry=None,
                multiprocess_mode=mode,
            )

        self.output_values = output("values", "Finite values of an output column", "sum")
        self.output_sum = output("sum", "Sum of an output column's finite values", "sum")
        self.output_squares = output("sum_squares", "Sum of their squares", "sum")
        self.output_min = output("min", "Smallest finite value of an output column", "min")
        self.output_max = output("max", "Largest finite value of an output column", "max")


_instruments: list[_Instruments] = []
# This process's output totals over its tasks: (labels, column) -> [values, sum,
# squares, min, max].
_output_totals: dict[tuple[Any, ...], list[float]] = {}
_lock = threading.Lock()
_server: dict[str, Any] = {}  # this process's executor server: {"directory", "info"}


def _add_counts(child: Any, counts: list[int], total: float) -> None:
    """Add ``counts`` (per bucket, not cumulative, +Inf last) observations
    summing to ``total`` to a histogram child of the same bounds.

    prometheus_client keeps one value per bucket and the sum, and observe()
    adds 1 to one bucket and the value to the sum: this is ``n`` observe()s per
    bucket at once (tests/test_metrics.py compares it with observe())."""
    for bucket, n in zip(child._buckets, counts, strict=True):
        if n:
            bucket.inc(n)
    if total:
        child._sum.inc(total)


def _server_address(settings: Any) -> str:
    """This executor's ``/metrics`` address, its server started if needed.
    Raises OSError if it cannot start (then again at once in this process:
    one try, one warning per worker)."""
    executor = identify()
    path = directory(settings.directory, settings.application, executor.id)
    with _lock:
        if _server.get("failed", (None,))[0] == path:
            raise OSError(_server["failed"][1])
        info = _server.get("info")
        same = info is not None and _server.get("directory") == path
        if same and metrics_server.alive(int(info["pid"])):
            return info["address"]
        try:
            info = metrics_server.ensure(path, settings.ports, executor.pid, executor.host)
        except OSError as e:
            _server["failed"] = (path, str(e))
            raise
        activate(path)
        if not same:
            logger.info(
                "torchspark: executor %s metrics at http://%s/metrics", executor.id, info["address"]
            )
        _server.update(directory=path, info=info)
        return info["address"]


class TaskMetrics:
    """One task's figures: counted per Arrow batch (:meth:`on_batch`),
    written to Prometheus and sent to the driver at most every
    :data:`FLUSH_S` and at the task's end (:meth:`finish`).

    Never raises into the task: made by :meth:`start`, which returns None
    (and logs why) where metrics cannot be kept.
    """

    def __init__(
        self,
        settings: Any,
        engine: Any,
        model: str,
        digest: str,
        device: str,
        task: Mapping[str, Any],
        stats: Mapping[str, Any],
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.task = dict(task)
        self.stats = stats  # the task's, as worker.score fills it (bad rows, NaN/Inf, error)
        executor = identify()
        self.labels = (settings.application, executor.id, model, digest, device)
        native = engine.histograms()
        self.bounds = native["end_to_end"]["bounds"]
        self.rows_bounds = native["batch_rows"]["bounds"]
        self.address: str | None = None
        self.prometheus: _Instruments | None = None
        if settings.metrics:
            try:
                self.address = _server_address(settings)
                with _lock:
                    if not _instruments:
                        _instruments.append(_Instruments(self.bounds, self.rows_bounds))
                self.prometheus = _instruments[0]
            except Exception as e:  # Prometheus off in this worker; progress still works
                if not _server.get("warned"):
                    _server["warned"] = True
                    logger.warning("torchspark: no executor metrics: %s: %s", type(e).__name__, e)
        self.sender = None
        if settings.live is not None:
            from .live import sender

            self.sender = sender(tuple(settings.live))
        # Native histograms: at the task's start, and as last written.
        self.started = {k: native[k] for k in _NATIVE}
        self.written = dict(self.started)
        self.rows = self.batches = self.fed = 0
        self.request = [0] * (len(self.bounds) + 1)  # per Arrow batch, this task
        self.request_sum = 0.0
        self.written_counts: dict[str, Any] = {
            "rows": 0,
            "batches": 0,
            "request": list(self.request),
            "request_sum": 0.0,
            "bad_rows": 0,
            "nonfinite": {},
            "outputs": {},  # column -> (values, sum, squares) of this task written
        }
        self.seq = 0
        self.next_flush = time.monotonic() + FLUSH_S

    @classmethod
    def start(
        cls, settings: Any, engine: Any, ref: Any, device: Any, task: Any, stats: Mapping[str, Any]
    ) -> TaskMetrics | None:
        """A task's metrics (``task``: its TaskContext, or None on the driver;
        ``stats``: its :func:`.worker.new_stats`), or None when ``settings`` is
        (metrics and progress off) or they cannot be kept (logged)."""
        if settings is None:
            return None
        at = {"stage": -1, "partition": -1, "attempt": 0, "start": stats["start"]}
        try:
            if task is not None:
                at.update(stage=task.stageId(), partition=task.partitionId())
                at.update(attempt=task.attemptNumber())
            digest = (ref.sha256 or "")[:16]
            return cls(settings, engine, ref.name, digest, str(device), at, stats)
        except Exception as e:  # metrics are a courtesy: never in place of the task
            logger.warning("torchspark: metrics off for this task: %s: %s", type(e).__name__, e)
            return None

    def feed(self, batches: Iterable[Any]) -> Iterator[Any]:
        """``batches``, counting their rows (those of a failed batch are failed rows)."""
        for batch in batches:
            self.fed += batch.num_rows
            yield batch

    def on_batch(self, batch: Any, scored: Any, seconds: float) -> None:
        """:func:`.worker.score`'s ``on_batch``: one Arrow batch scored."""
        self.rows += batch.num_rows
        self.batches += 1
        self.request[bisect.bisect_left(self.bounds, seconds)] += 1
        self.request_sum += seconds
        if time.monotonic() >= self.next_flush:
            self.flush(done=False)

    def finish(self) -> None:
        """The task ended: its last figures."""
        self.flush(done=True)

    def flush(self, done: bool) -> None:
        try:
            self._flush(done)
        except Exception as e:  # never in place of the task's own outcome
            logger.warning("torchspark: metrics not written: %s: %s", type(e).__name__, e)
        self.next_flush = time.monotonic() + FLUSH_S

    def _flush(self, done: bool) -> None:
        native = self.engine.histograms()
        stats = self.stats
        failed = done and bool(stats.get("error"))
        bad_rows = int(stats.get("bad_rows") or 0)
        nonfinite = dict(stats.get("nonfinite") or {})
        if self.prometheus is not None:
            self._write(native, done, failed, bad_rows, nonfinite)
        self.written = {k: native[k] for k in _NATIVE}
        if self.sender is not None:
            self.seq += 1
            self.sender.send(
                {
                    "token": self.settings.token,
                    "run": self.settings.run,
                    **self.task,
                    "seq": self.seq,
                    "done": done,
                    "failed": failed,
                    "executor": self.labels[1],
                    "address": self.address,
                    "model": self.labels[2],
                    "device": self.labels[4],
                    "rows": self.rows,
                    "batches": self.batches,
                    "failed_rows": self.fed - self.rows if failed else 0,
                    "bad_rows": bad_rows,
                    "nonfinite": nonfinite,
                    "bounds": self.bounds,
                    "request": self.request,
                    "request_sum": self.request_sum,
                    **{
                        k: _delta(native[k], self.started[k])
                        for k in ("compute", "queue", "batch_rows")
                    },
                    "rows_bounds": self.rows_bounds,
                }
            )

    def _write(
        self,
        native: Mapping[str, Any],
        done: bool,
        failed: bool,
        bad_rows: int,
        nonfinite: dict[str, int],
    ) -> None:
        p = self.prometheus
        assert p is not None
        labels = self.labels
        written = self.written_counts
        if self.rows > written["rows"]:
            p.rows_success.labels(*labels).inc(self.rows - written["rows"])
        if self.batches > written["batches"]:
            p.request_success.labels(*labels).inc(self.batches - written["batches"])
        request = [a - b for a, b in zip(self.request, written["request"], strict=True)]
        _add_counts(
            p.histograms["request"].labels(*labels),
            request,
            self.request_sum - written["request_sum"],
        )
        written.update(
            rows=self.rows,
            batches=self.batches,
            request=list(self.request),
            request_sum=self.request_sum,
        )
        for name in _NATIVE:
            delta = _delta(native[name], self.written[name])
            _add_counts(p.histograms[name].labels(*labels), delta["counts"], delta["sum"])
        if failed:
            p.request_failure.labels(*labels).inc()
            if self.fed > self.rows:
                p.rows_failure.labels(*labels).inc(self.fed - self.rows)
        if bad_rows > written["bad_rows"]:
            p.rows_quarantined.labels(*labels).inc(bad_rows - written["bad_rows"])
        for output, count in nonfinite.items():
            before = written["nonfinite"].get(output, 0)
            if count > before:
                p.nonfinite.labels(*labels, str(output)).inc(count - before)
        written.update(bad_rows=bad_rows, nonfinite=dict(nonfinite))
        self._write_outputs(p, labels, written["outputs"])
        memory = _device_memory(labels[4])
        if memory is not None:
            p.memory.labels(*labels).set(memory)
        padded = self.engine.padded
        if padded and done:  # stats() sorts the latency windows: once per task
            p.padding.labels(*labels).set(self.engine.stats()["padding_ratio"])

    def _write_outputs(self, p: _Instruments, labels: Any, written: dict[str, Any]) -> None:
        """The task's output statistics since the last write, added to the process's totals."""
        for column, stats in dict(self.stats.get("output_stats") or {}).items():
            if not stats.count:
                continue
            now = (stats.count, stats.mean * stats.count, stats.m2 + stats.count * stats.mean**2)
            before = written.get(column, (0, 0.0, 0.0))
            totals = _output_totals.setdefault(
                (tuple(labels), column), [0, 0.0, 0.0, math.inf, -math.inf]
            )
            for i in range(3):
                totals[i] += now[i] - before[i]
            totals[3] = min(totals[3], stats.min)
            totals[4] = max(totals[4], stats.max)
            written[column] = now
            child = (*labels, str(column))
            p.output_values.labels(*child).set(totals[0])
            p.output_sum.labels(*child).set(totals[1])
            p.output_squares.labels(*child).set(totals[2])
            p.output_min.labels(*child).set(totals[3])
            p.output_max.labels(*child).set(totals[4])


def _delta(now: Mapping[str, Any], before: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "counts": [a - b for a, b in zip(now["counts"], before["counts"], strict=True)],
        "sum": now["sum"] - before["sum"],
    }


def _device_memory(device: str) -> int | None:
    """Bytes the caching allocator holds for tensors on ``device``; None on the CPU."""
    if device == "cpu" or device.startswith("cpu"):
        return None
    import torch

    return int(torch.accelerator.memory_allocated(torch.device(device)))
