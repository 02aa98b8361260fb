"""What the tasks of a scoring job report: per-task records, :class:`Report`, :func:`last_report`.

Each task of a ``predict`` / ``arrow_predictor`` / ``torch_udf`` job sends one
record (rows, Arrow batches, model calls, latencies, device, error) to the
driver through an accumulator of its run (one run per function made on the
driver).
"""

from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass, field
from typing import Any

_LATENCY_SAMPLES = 256  # per task, sent back to the driver


@dataclass
class Report:
    """What the tasks of the last job that ran a ``predict`` reported.

    ``rows_per_s`` is rows over the span from the first task's start to the
    last task's end; latencies are per Arrow batch (submit to outputs ready),
    pooled over tasks.
    """

    rows: int
    tasks: int
    wall_s: float
    rows_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    arrow_batches: int
    model_calls: int
    devices: list[str]
    models: list[str]
    batch_sizes: list[int]
    intra_op_threads: list[int]
    errors: list[str] = field(default_factory=list)
    task_records: list[dict[str, Any]] = field(default_factory=list, repr=False)

    def __str__(self) -> str:
        return (
            f"{self.rows:,} rows in {self.tasks} tasks, {self.wall_s:.2f} s "
            f"({self.rows_per_s:,.0f} rows/s); latency per Arrow batch p50 {self.p50_ms:.1f} ms, "
            f"p90 {self.p90_ms:.1f} ms, p99 {self.p99_ms:.1f} ms; {self.arrow_batches} Arrow "
            f"batches, {self.model_calls} model calls; model {', '.join(self.models)} on "
            f"{', '.join(self.devices)}, batch_size {', '.join(map(str, self.batch_sizes))}, "
            f"intra-op threads {', '.join(map(str, self.intra_op_threads))}"
            + (f"; errors: {self.errors}" if self.errors else "")
        )


def sample(values: list[float], limit: int = _LATENCY_SAMPLES) -> list[float]:
    """At most ``limit`` of ``values``, evenly spaced."""
    if len(values) <= limit:
        return values
    step = len(values) / limit
    return [values[int(i * step)] for i in range(limit)]


class _ListParam:
    """Accumulator of per-task records (lists concatenate)."""

    def zero(self, value: list[Any]) -> list[Any]:
        return []

    def addInPlace(self, a: list[Any], b: list[Any]) -> list[Any]:
        a.extend(b)
        return a


_runs: dict[str, Any] = {}  # run id -> accumulator of its task records
_runs_lock = threading.Lock()


def new_run(sc: Any) -> tuple[str, Any]:
    """A run id and the accumulator its tasks add their records to."""
    from pyspark.accumulators import AccumulatorParam

    param = type("_TorchSparkRecords", (_ListParam, AccumulatorParam), {})()
    accumulator = sc.accumulator([], param)
    run = uuid.uuid4().hex[:12]
    with _runs_lock:
        _runs[run] = accumulator
    return run, accumulator


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _summarise(records: list[dict[str, Any]]) -> Report:
    latencies = [v for r in records for v in r["latency_ms"]]
    start = min(r["start"] for r in records)
    end = max(r["end"] for r in records)
    rows = sum(r["rows"] for r in records)
    wall = max(end - start, 1e-9)
    return Report(
        rows=rows,
        tasks=len(records),
        wall_s=wall,
        rows_per_s=rows / wall,
        p50_ms=_percentile(latencies, 0.5),
        p90_ms=_percentile(latencies, 0.9),
        p99_ms=_percentile(latencies, 0.99),
        arrow_batches=sum(r["arrow_batches"] for r in records),
        model_calls=sum(r["model_calls"] for r in records),
        devices=sorted({r["device"] for r in records}),
        models=sorted({f"{r['model']} ({r['format']})" for r in records}),
        batch_sizes=sorted({r["batch_size"] for r in records}),
        intra_op_threads=sorted({r["intra_op_threads"] for r in records}),
        errors=[r["error"] for r in records if r["error"]],
        task_records=records,
    )


def last_report() -> Report | None:
    """A summary of the tasks of the most recent job that ran a ``predict``
    (or an ``arrow_predictor`` / ``torch_udf``), or None before any ran.

    >>> torchspark.predict(df, path, inputs="x").write.format("noop").mode("overwrite").save()
    >>> report = torchspark.last_report()
    >>> report.rows, report.p50_ms <= report.p99_ms
    (2, True)
    """
    with _runs_lock:
        accumulators = list(_runs.values())
    records = [r for a in accumulators for r in a.value]
    if not records:
        return None
    # The job that finished last: its stage's records (a DataFrame run twice
    # reports its last run only).
    last = max(records, key=lambda r: r["end"])
    key = (last["run"], last["stage"])
    latest: dict[tuple[int, int], dict[str, Any]] = {}
    for r in records:
        if (r["run"], r["stage"]) == key:
            previous = latest.get((r["partition"], r["attempt"]))
            if previous is None or r["end"] > previous["end"]:
                latest[(r["partition"], r["attempt"])] = r
    return _summarise(sorted(latest.values(), key=lambda r: (r["partition"], r["attempt"])))
