"""What the tasks of a scoring job report: per-task records, :class:`Report`, :func:`last_report`.

Each task of a ``predict`` / ``arrow_predictor`` / ``torch_udf`` job sends one
record (rows, Arrow batches, model calls, latencies, device, error, the SQL
execution it ran in) to the driver through an accumulator of its run (one run
per function made on the driver). The function Spark runs is named
``torchspark_<run>``, so the plan of each SQL execution says which runs it
holds: :func:`last_report` finds the newest execution that ran one, with or
without tasks, and whether it failed (a failed task's record does not reach
the driver: Spark drops the accumulator updates of failed tasks).

Under Spark Connect there are no accumulators and no status store: the tasks
write their records as files (:mod:`.record_files`, where :mod:`.connect`
says), and the report is that of the newest SQL execution the records name;
what it cannot show there is in :attr:`Report.limits`.
"""

from __future__ import annotations

import collections
import re
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any

from . import connect
from .drift import ColumnStats, Comparison, compare, merge
from .record_files import RecordFiles

_LATENCY_SAMPLES = 256  # per task, sent back to the driver


@dataclass
class Report:
    """What the tasks of the last job that ran a ``predict`` reported.

    ``rows_per_s`` is rows over the span from the first task's start to the
    last task's end; latencies are per Arrow batch (submit to outputs ready),
    pooled over tasks. ``failed``: the job failed; Spark's error is the last of
    ``errors`` (a failed task's own record never reaches the driver). A job
    that ran no task (an empty DataFrame) reports 0 ``rows`` and 0 ``tasks``.
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
    failed: bool = False
    rows_truncated: int = 0  # text rows cut at max_len
    token_budgets: list[int] = field(default_factory=list)  # max_tokens the tasks ran with
    # on_error="null" / "quarantine": rows that failed (rows = scored + bad), by reason,
    # the first few with where they were; quarantine: where the files went.
    bad_rows: int = 0
    bad_row_reasons: dict[str, int] = field(default_factory=dict)
    bad_row_examples: list[str] = field(default_factory=list)
    quarantine_files: list[str] = field(default_factory=list)
    nonfinite: dict[str, int] = field(default_factory=dict)  # per output: rows with NaN/Inf
    # Per column, merged over tasks (see .drift); inputs with input_stats=True only.
    output_stats: dict[str, ColumnStats] = field(default_factory=dict, repr=False)
    input_stats: dict[str, ColumnStats] = field(default_factory=dict, repr=False)
    task_records: list[dict[str, Any]] = field(default_factory=list, repr=False)
    # Fields this report cannot fill as it would in a classic session, and why
    # (Spark Connect: see .connect.LIMITS); empty otherwise.
    limits: dict[str, str] = field(default_factory=dict)

    def quarantined(self, spark: Any = None) -> Any:
        """The rows ``on_error="quarantine"`` set aside, with their error
        column, as a DataFrame (of ``spark``, default the active session):
        read from the quarantine directory's files this job wrote, or made
        from the rows the tasks sent to the driver. None if no row was set aside.

        >>> scored = torchspark.predict(df, path, inputs="x", on_error="quarantine")
        >>> scored.count()
        2
        >>> report = torchspark.last_report()
        >>> report.bad_rows, report.quarantined()  # no row failed
        (0, None)
        """
        from pyspark.sql import SparkSession

        from .quarantine import from_bytes

        spark = spark or SparkSession.getActiveSession()
        if self.quarantine_files:
            return spark.read.parquet(*self.quarantine_files)
        latest: dict[tuple[Any, ...], dict[str, Any]] = {}
        for r in self.task_records:  # one attempt per partition (the latest)
            key = (r["run"], r["stage"], r["partition"])
            if key not in latest or r["end"] > latest[key]["end"]:
                latest[key] = r
        table = from_bytes([r["quarantined"] for r in latest.values() if r.get("quarantined")])
        return None if table is None else spark.createDataFrame(table)

    def compare(self, reference: Report, bins: int = 10) -> Comparison:
        """How this job's outputs (and inputs, where both jobs recorded them)
        moved from ``reference``'s: a :class:`.drift.Drift` per column (population
        stability index over the reference's deciles, mean shift in reference
        standard deviations, std ratio, shares of NaN/Inf). PSI < 0.1: no
        significant change; 0.1-0.25: moderate; > 0.25: significant.

        >>> job = torchspark.predict(df, path, inputs="x", keep=["id"])
        >>> job.write.format("noop").mode("overwrite").save()
        >>> baseline = torchspark.last_report()
        >>> job.write.format("noop").mode("overwrite").save()  # a later run: new data, model
        >>> comparison = torchspark.last_report().compare(baseline)
        >>> comparison.outputs["prediction"].psi, comparison.drifted()
        (0.0, [])
        """
        return compare(
            self.output_stats, reference.output_stats, self.input_stats, reference.input_stats, bins
        )

    def save(self, path: str) -> str:
        """Writes this report as one self-contained HTML file (plots embedded as
        PNG): throughput over time, latency histogram with P50/P90/P99, batch
        sizes, rows per executor, bad rows by reason, output (and input)
        distributions. Needs matplotlib (``pip install torchspark[report]``).
        Returns ``path``.

        >>> out = torchspark.last_report().save(os.path.join(tempfile.mkdtemp(), "report.html"))
        >>> open(out).read().startswith("<!DOCTYPE html>")
        True
        """
        from .report_html import write

        return write(self, path)

    def __str__(self) -> str:
        status = "FAILED: " if self.failed else ""
        if self.tasks == 0:
            return (
                status
                + "no rows: the job ran no task (an empty DataFrame)"
                + (f"; errors: {self.errors}" if self.errors else "")
            )
        return status + (
            f"{self.rows:,} rows in {self.tasks} tasks, {self.wall_s:.2f} s "
            f"({self.rows_per_s:,.0f} rows/s); latency per Arrow batch p50 {self.p50_ms:.1f} ms, "
            f"p90 {self.p90_ms:.1f} ms, p99 {self.p99_ms:.1f} ms; {self.arrow_batches} Arrow "
            f"batches, {self.model_calls} model calls; model {', '.join(self.models)} on "
            f"{', '.join(self.devices)}, batch_size {', '.join(map(str, self.batch_sizes))}, "
            f"intra-op threads {', '.join(map(str, self.intra_op_threads))}"
            + (
                f", token budget {', '.join(map(str, self.token_budgets))}"
                if self.token_budgets
                else ""
            )
            + (f"; {self.rows_truncated:,} text rows truncated" if self.rows_truncated else "")
            + (f"; {self.bad_rows:,} bad rows: {self.bad_row_reasons}" if self.bad_rows else "")
            + (f"; rows with NaN/Inf outputs: {self.nonfinite}" if self.nonfinite else "")
            + (f"; errors: {self.errors}" if self.errors else "")
            + (
                f"; cannot show in full (see .limits): {', '.join(self.limits)}"
                if self.limits
                else ""
            )
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


_runs: dict[str, Any] = {}  # run id -> its records: an accumulator, RecordFiles or None
_runs_lock = threading.Lock()


def new_run(spark: Any) -> tuple[str, Any]:
    """A run id and what its tasks add their records to: an accumulator of
    ``spark``'s SparkContext, or under Spark Connect a
    :class:`.record_files.RecordFiles` (None where no directory reaches this
    client: :func:`.connect.records_directory`)."""
    run = uuid.uuid4().hex[:12]
    if connect.is_connect(spark):
        directory = connect.records_directory(spark)
        records = None if directory is None else RecordFiles(directory, run)
    else:
        from pyspark.accumulators import AccumulatorParam

        param = type("_TorchSparkRecords", (_ListParam, AccumulatorParam), {})()
        records = spark.sparkContext.accumulator([], param)
    with _runs_lock:
        _runs[run] = records
    return run, records


def function_name(run: str) -> str:
    """The name Spark shows for a run's function in its plans."""
    return f"torchspark_{run}"


_FUNCTION = re.compile(r"torchspark_([0-9a-f]{12})\b")


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _summarise(records: list[dict[str, Any]]) -> Report:
    latencies = [v for r in records for v in r["latency_ms"]]
    start = min((r["start"] for r in records), default=0.0)
    end = max((r["end"] for r in records), default=0.0)
    rows = sum(r["rows"] for r in records)
    wall = max(end - start, 1e-9) if records else 0.0
    return Report(
        rows=rows,
        tasks=len(records),
        wall_s=wall,
        rows_per_s=rows / wall if records else 0.0,
        p50_ms=_percentile(latencies, 0.5),
        p90_ms=_percentile(latencies, 0.9),
        p99_ms=_percentile(latencies, 0.99),
        arrow_batches=sum(r["arrow_batches"] for r in records),
        model_calls=sum(r["model_calls"] for r in records),
        devices=sorted({r["device"] for r in records}),
        models=sorted({f"{r['model']} ({r['format']})" for r in records if r["format"]}),
        batch_sizes=sorted({r["batch_size"] for r in records if r["batch_size"] is not None}),
        intra_op_threads=sorted({r["intra_op_threads"] for r in records}),
        errors=[r["error"] for r in records if r["error"]],
        rows_truncated=sum(r.get("rows_truncated", 0) for r in records),
        token_budgets=sorted({r["token_budget"] for r in records if r.get("token_budget")}),
        bad_rows=sum(r.get("bad_rows", 0) for r in records),
        bad_row_reasons=_merged([r.get("bad_row_reasons", {}) for r in records]),
        bad_row_examples=[e for r in records for e in r.get("bad_row_examples", ())][:10],
        quarantine_files=sorted(
            {r["quarantine_file"] for r in records if r.get("quarantine_file")}
        ),
        nonfinite=_merged([r.get("nonfinite", {}) for r in records]),
        output_stats=merge([r.get("output_stats", {}) for r in records]),
        input_stats=merge([r.get("input_stats", {}) for r in records]),
        task_records=records,
    )


def _merged(counts: list[dict[str, int]]) -> dict[str, int]:
    """Counts by key, summed over tasks, largest first."""
    total: collections.Counter[str] = collections.Counter()
    for c in counts:
        total.update(c)
    return dict(total.most_common())


def last_report() -> Report | None:
    """A summary of the tasks of the most recent job that ran a ``predict``
    (or an ``arrow_predictor`` / ``torch_udf``), or None before any ran.

    The most recent such job, whatever it did: a job that failed has
    ``failed`` set and Spark's error in ``errors``; a job that ran no task (an
    empty DataFrame) reports 0 rows and 0 tasks. Under Spark Connect,
    ``limits`` says what the report cannot show there; None when the tasks'
    records cannot reach this client (see :mod:`.connect`).

    >>> torchspark.predict(df, path, inputs="x").write.format("noop").mode("overwrite").save()
    >>> report = torchspark.last_report()
    >>> report.rows, report.p50_ms <= report.p99_ms, report.failed
    (2, True, False)
    """
    with _runs_lock:
        runs = dict(_runs)
    if runs and not _is_accumulator(list(runs.values())[-1]):
        return _connect_report(runs)
    runs = {run: records for run, records in runs.items() if _is_accumulator(records)}
    records = [r for a in runs.values() for r in a.value]
    last = _last_execution(set(runs), records)
    if last is None:
        return _latest_by_time(records)
    execution, error = last
    report = _summarise(_deduplicated([r for r in records if r.get("execution") == execution]))
    if error:
        report.failed = True
        report.errors.append(error)
    return report


def _is_accumulator(records: Any) -> bool:
    return records is not None and not isinstance(records, RecordFiles)


def _connect_report(runs: dict[str, Any]) -> Report | None:
    """Under Spark Connect: the newest execution's records from the runs'
    record files; None when the newest run's records cannot reach this
    client (see .connect.records_directory)."""
    if list(runs.values())[-1] is None:
        return None
    records = [r for a in runs.values() if isinstance(a, RecordFiles) for r in a.value]
    report = _latest_by_time(records)
    if report is not None:
        report.limits = dict(connect.LIMITS)
    return report


def _deduplicated(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per task (partition of a stage): of its attempts, the
    latest that succeeded, else the latest; so a retried or speculated task
    counts once (record files keep failed attempts too)."""
    chosen: dict[tuple[Any, ...], dict[str, Any]] = {}
    for r in records:
        key = (r["run"], r["stage"], r["partition"])
        rank = (not r["error"], r["end"])
        if key not in chosen or rank > (not chosen[key]["error"], chosen[key]["end"]):
            chosen[key] = r
    return sorted(chosen.values(), key=lambda r: (r["partition"], r["attempt"], r["stage"]))


def _latest_by_time(records: list[dict[str, Any]]) -> Report | None:
    """Without Spark's execution history (no SQL status store): the SQL
    execution of the record that ended last (else its stage); failed when a
    task has no successful attempt."""
    if not records:
        return None
    last = max(records, key=lambda r: r["end"])
    if last.get("execution") is not None:
        chosen = [r for r in records if r.get("execution") == last["execution"]]
    else:
        chosen = [r for r in records if (r["run"], r["stage"]) == (last["run"], last["stage"])]
    report = _summarise(_deduplicated(chosen))
    report.failed = bool(report.errors)
    return report


_SCANNED = 64  # newest SQL executions searched for a torchspark function


def _last_execution(runs: set[str], records: list[dict[str, Any]]) -> tuple[int, str | None] | None:
    """The newest SQL execution that ran a function of ``runs``: its id and, if
    it failed, the error; None where Spark's status store is out of reach."""
    from pyspark import SparkContext

    sc = SparkContext._active_spark_context
    if sc is None or not runs:
        return None
    try:
        sc._jsc.sc().listenerBus().waitUntilEmpty()  # the events of the job that just ended
        store = sc._jvm.org.apache.spark.sql.SparkSession.active().sharedState().statusStore()
        count = store.executionsCount()
        executions = store.executionsList(max(0, count - _SCANNED), min(count, _SCANNED))
        newest = []
        iterator = executions.iterator()
        while iterator.hasNext():
            newest.append(iterator.next())
        with_records = {r.get("execution") for r in records}
        for execution in reversed(newest):
            number = int(execution.executionId())
            if number not in with_records:
                # No record: a job with no task if a function of ours is in its
                # plan (wrapped in a user's function, it shows under their name,
                # but then it has records), unless a cache holds its output (the
                # job read it without running the function; an older one did).
                plan = execution.physicalPlanDescription()
                if not runs & set(_FUNCTION.findall(plan)) or "InMemoryRelation" in plan:
                    continue
            message = execution.errorMessage()
            error = message.get() if message.isDefined() else None
            return number, _first_error_line(error) if error else None
    except Exception:
        return None
    return None


def _first_error_line(message: str) -> str:
    """The Python exception line of a Spark error (``NullValueError: ...``), else its first line."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    for line in lines:
        if re.match(r"^[\w.]*(Error|Exception): ", line) and not line.startswith(
            ("org.apache.", "java.", "py4j.", "scala.")
        ):
            return line[:2000]
    return lines[0][:2000] if lines else message
