"""Scoring a DataFrame on the driver: :func:`predict` and :func:`arrow_predictor`.

Both plan on the driver (:mod:`.plan`) and hand Spark the worker function
(:class:`.worker.ArrowPredictor`) for ``mapInArrow``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ..engine import Input
from .bad_rows import bad_row_policy
from .environment import check_executor_python
from .monitor import settings
from .packing import packed
from .plan import Plan, arrow_batch_rows, check_engine_options, engine_inputs, plan, quote
from .report import new_run
from .shared.mode import sharing
from .worker import ArrowPredictor


def arrow_predictor(
    df_or_schema: Any,
    model: str | os.PathLike[str] | torch.nn.Module,
    *,
    inputs: Any,
    output: str | Sequence[str] = "prediction",
    keep: Sequence[str] | None = None,
    device: str = "auto",
    batch_size: int | None = None,
    precision: str = "fp32",
    sha256: str | None = None,
    schema: Any = None,
    on_error: str = "raise",
    max_bad_rows: int | float | None = None,
    check_finite: bool = False,
    quarantine: str | os.PathLike[str] | None = None,
    error_column: str = "_error",
    input_stats: bool = False,
    share: str = "auto",
    **engine_options: Any,
) -> ArrowPredictor:
    """The function to hand to ``df.mapInArrow`` yourself; its ``.schema`` is the output schema.

    ``df_or_schema`` is the DataFrame it will be applied to (its schema and a
    probe batch derive the output schema). Arguments are those of
    :func:`predict`.

    >>> fn = torchspark.arrow_predictor(df, path, inputs="x")
    >>> fn.schema.simpleString()
    'struct<id:bigint,x:array<float>,prediction:float>'
    >>> df.mapInArrow(fn, fn.schema).count()
    2
    """
    batch_size = batch_size or arrow_batch_rows(df_or_schema)
    options = check_engine_options(batch_size, precision, engine_options)
    policy = bad_row_policy(on_error, max_bad_rows, check_finite, quarantine, error_column)
    check_executor_python(df_or_schema.sparkSession)
    planned = plan(
        df_or_schema, model, inputs, output, keep, device, options, sha256, schema, policy
    )
    return _predictor(df_or_schema, planned, input_stats=input_stats, share=share)


def _predictor(
    df: Any,
    planned: Plan,
    alias: Mapping[str, str] | None = None,
    input_stats: bool = False,
    progress: bool = False,
    share: str = "auto",
) -> ArrowPredictor:
    """The mapInArrow function of ``planned``, its columns renamed by ``alias``;
    with live metrics (:mod:`.monitor`) and ``progress`` where on."""
    from pyspark.sql import types as T

    alias = alias or {}
    run, records = new_run(df.sparkSession)
    monitor = settings(df.sparkSession, run, df if progress else None)
    schema = T.StructType(
        [T.StructField(alias.get(f.name, f.name), f.dataType, f.nullable) for f in planned.schema]
    )
    return ArrowPredictor(
        planned.ref,
        engine_inputs([_renamed(spec, alias) for spec in planned.specs], planned.names),
        [alias.get(c, c) for c in planned.keep],
        planned.outputs,
        schema,
        planned.device,
        planned.options,
        run,
        records,
        policy=planned.policy,
        output_types=planned.output_types,
        input_stats=input_stats,
        monitor=monitor,
        share=sharing(df.sparkSession, share, planned.device),
    )


def _renamed(spec: Input, alias: Mapping[str, str]) -> Input:
    columns = [alias.get(c, c) for c in spec.column_list]
    return dataclasses.replace(
        spec, columns=columns[0] if isinstance(spec.columns, str) else columns
    )


def predict(
    df: Any,
    model: str | os.PathLike[str] | torch.nn.Module,
    *,
    inputs: Any,
    output: str | Sequence[str] = "prediction",
    keep: Sequence[str] | None = None,
    device: str = "auto",
    batch_size: int | None = None,
    precision: str = "fp32",
    sha256: str | None = None,
    schema: Any = None,
    on_error: str = "raise",
    max_bad_rows: int | float | None = None,
    check_finite: bool = False,
    quarantine: str | os.PathLike[str] | None = None,
    error_column: str = "_error",
    input_stats: bool = False,
    progress: bool = True,
    share: str = "auto",
    **engine_options: Any,
) -> Any:
    """Score ``df`` with a TorchScript or AOTInductor model; returns a new DataFrame.

    Args:
        df: the DataFrame to score.
        model: a local path (shipped to the executors with ``addFile``; under
            Spark Connect with ``addArtifacts``: :mod:`.connect`), the
            name of a file added with ``SparkContext.addFile``, or a URI that
            ``pyarrow.fs`` reads (``s3://``, ``hdfs://``, ``gs://``, ``file://``),
            fetched once per executor host. From :func:`torchspark.export`. Or
            an ``nn.Module``: exported on the driver (TorchScript) with the probe
            batch's rows as the example, verified against the module, cached by
            a digest of its code and weights, and shipped as that file.
        inputs: how columns feed the model:
            ``"features"``: one column (``array<float>`` -> ``[N, D]``);
            ``["a", "b", ...]``: scalar columns gathered to ``[N, F]``;
            ``Input("tokens", kind="pad")``: a token ``array<int>`` column,
            padded, batched by ``max_tokens``;
            ``[Input(...), ...]``: one per positional model input;
            ``{"x": ..., "tokens": ...}``: by the model's argument names.
        output: the prediction column's name; a model returning a tuple gets
            ``<output>_0, <output>_1, ...``; a dict output keeps its keys; a list
            names each output. A column's rows are the output's rows: one value
            per row (``[N]`` or ``[N, 1]``) gives a scalar column (``float``,
            not an ``array<float>`` of length 1, as ``predict_batch_udf``
            does), ``[N, D]`` gives ``array<float>``, ``[N, D, E]``
            ``array<array<float>>``. Half precision becomes ``float``.
        keep: the columns passed through. By default every column, the inputs
            included, as ``withColumn`` does: on Spark 4.1+ the outputs are
            then added as ``arrow_udf`` columns, so only the inputs (and the
            first column, when a number, to name a failing row) cross to
            Python; the other columns stay in the JVM (see
            benchmarks/RESULTS.md, "keeping every column"). With ``keep=[...]``
            (and before Spark 4.1) the job runs through ``mapInArrow``, where
            each kept column crosses to Python and back: name only those you
            need, e.g. ``keep=["id"]``.
        device: ``"auto"`` (the task's GPU, else the CPU) or a torch device.
        batch_size: rows per model call; default: Spark's Arrow batch size
            (``spark.sql.execution.arrow.maxRecordsPerBatch``), so that each
            Arrow batch is one model call on a zero-copy view of it.
        precision, engine options (``max_tokens``,
            ``max_delay_ms``, ``threads``, ``inflight``, ``static_batch``,
            ``sort_window``, ``per_token``): see :class:`torchspark.Engine`.
            ``per_token`` outputs become ``array<array<...>>`` columns, each row
            as wide as its Arrow batch's longest token list, 0 past its length.
        sha256: expected digest of the model file, checked before loading.
        schema: the output columns' schema (StructType or DDL), checked
            against what the model returns on a probe batch.
        on_error: what a row that fails (conversion, tokenizing, decoding,
            the model call) does: ``"raise"`` (default) fails the task, naming
            the row; ``"null"`` gives it null outputs and its error in
            ``error_column``; ``"quarantine"`` leaves it out and sets it aside
            with its columns and error (see ``quarantine``). Bad rows are
            found by bisecting the failed Arrow batch; counted by reason in
            :func:`last_report` (``bad_rows``, ``bad_row_reasons``).
        max_bad_rows: with ``"null"``/``"quarantine"``, fail a task anyway
            above this many bad rows (an int) or this fraction of its rows (a
            float in (0, 1)); the error names the count and the first rows.
        check_finite: make rows whose outputs hold NaN or Inf bad rows (they
            are always counted per output: ``last_report().nonfinite``).
        quarantine: with ``"quarantine"``, a directory (path or ``pyarrow.fs``
            URI) for the rows set aside, one Parquet file per partition; by
            default they go to the driver: ``last_report().quarantined()``.
        error_column: the error column's name with ``"null"`` (``"_error"``).
        input_stats: the tasks also record statistics of the numeric input
            columns (as they do of every output column), for
            :meth:`Report.compare` (input drift). Off by default: it reads
            every input value once more.
        share: where the engine runs. ``"task"``: in each task's Python
            worker (one model copy per task slot, torch's intra-op threads
            from ``spark.task.cpus``). ``"executor"``: one engine process per
            executor, device, model and set of options, started by the first
            task that needs it and fed by every task of the executor through
            shared memory: the model loads once per executor and device, and
            rows of different tasks share model calls. There ``batch_size``,
            ``max_delay_ms``, ``precision``, ``threads``, ``inflight``,
            ``max_tokens`` and ``sort_window`` are the engine's (tasks with
            other values get another engine), each task keeps ``inflight *
            batch_size`` rows in it, and on the CPU it runs one worker
            thread per task slot (``spark.executor.cores //
            spark.task.cpus``, the cores by Spark's default where unset:
            N of ``local[N]``, 1 on YARN and Kubernetes, on a standalone
            cluster the cores the engine may run on) with
            ``spark.task.cpus`` intra-op threads each,
            as the per-task engines would; with ``threads`` or
            ``intra_op_threads`` given, the other divides the cores. ``"auto"``
            (default): ``"executor"`` on an accelerator (the task's GPU)
            unless ``spark.task.resource.gpu.amount`` gives each task a
            whole GPU, else ``"task"``. With ``"executor"`` on GPUs, set
            ``spark.task.resource.gpu.amount`` to a fraction (``1 / task
            slots per GPU``) so that several tasks feed one GPU's engine; a
            fraction with ``share="task"`` loads one model copy per task on
            the GPU and warns on the driver.
        progress: while the job runs, the driver shows rows scored, rows/s,
            bad rows and, when Spark knows the input's row count, an ETA: one
            line rewritten in a terminal, else a ``torchspark`` log line
            (INFO) every 10 s. ``False`` turns it off.

    The probe (one small Spark job and a model load on the driver) runs once
    per model file (by digest), input column types and options in a driver
    session; later calls reuse what it showed, so problems it would catch in
    their data (a null in the first rows, say) surface in the job instead.

    Metrics of the tasks (rows, throughput, latency percentiles per Arrow batch,
    device, batch size, statistics of the outputs) are collected on the
    driver: see :func:`last_report`, :meth:`Report.compare` (drift) and
    :meth:`Report.save` (an HTML report). Live Prometheus metrics (every
    executor's ``/metrics``, the job's at the driver's) are on with
    ``spark.torchspark.metrics.enabled=true`` in the session's conf: see
    :mod:`torchspark.spark.monitor`.

    >>> scored = torchspark.predict(df, path, inputs="x", keep=["id"], output="score")
    >>> out = os.path.join(tempfile.mkdtemp(), "scored.parquet")
    >>> scored.write.parquet(out)
    >>> torchspark.last_report().rows
    2
    """
    arguments = dict(locals())  # every argument by name, nothing else yet
    arguments.update(arguments.pop("engine_options"))
    return score(arguments)[0]


def score(arguments: Mapping[str, Any], sink: Any = None) -> tuple[Any, Plan]:
    """:func:`predict` from all its arguments by name (engine options among
    them; bind them with ``inspect.signature(predict)``): its DataFrame and the
    plan behind it (the shipped model and its digest, the output schema), which
    :func:`.resume.predict_to` records.

    With a ``sink`` (a :class:`.chunk_writer.ChunkWriter`), the scored batches
    go to ``sink.around(predictor, schema)`` in the same Python worker, through
    ``mapInArrow``, and the DataFrame is what it yields."""
    named = dict(arguments)
    df, model, inputs, keep = (named.pop(k) for k in ("df", "model", "inputs", "keep"))
    output, device, sha256, schema = (
        named.pop(k) for k in ("output", "device", "sha256", "schema")
    )
    input_stats, progress, precision, share = (
        named.pop(k) for k in ("input_stats", "progress", "precision", "share")
    )
    batch_size = named.pop("batch_size") or arrow_batch_rows(df)
    policy = bad_row_policy(*(named.pop(k) for k in _POLICY_ARGUMENTS))
    options = check_engine_options(batch_size, precision, named)  # the rest: engine options
    check_executor_python(df.sparkSession)
    original = list(df.columns)
    # Rows set aside leave the output: only mapInArrow can drop rows.
    as_columns = keep is None and _has_arrow_udf() and policy.on_error != "quarantine"
    as_columns = as_columns and sink is None  # a sink takes every column in Python
    df, inputs, keep = packed(df, inputs, original if keep is None else keep)
    planned = plan(df, model, inputs, output, keep, device, options, sha256, schema, policy)
    if as_columns:
        return _with_outputs(df, planned, original, input_stats, progress, share), planned
    used = [c for spec in planned.specs for c in spec.column_list]
    shipped = list(dict.fromkeys(planned.keep + used))  # only the columns needed cross to Python
    # mapInArrow resolves its input columns by parsing their names, so a name
    # with a dot fails there: such DataFrames cross under plain aliases and get
    # their names back afterwards.
    rename = any("." in c or "`" in c for c in shipped)
    alias = {c: f"_torchspark_{i}" for i, c in enumerate(shipped)} if rename else {}
    predictor = _predictor(df, planned, alias, input_stats, progress, share)
    selected = df.selectExpr(*[f"{quote(c)} AS {quote(alias.get(c, c))}" for c in shipped])
    if sink is not None:
        function = sink.around(predictor, planned.schema)
        return selected.mapInArrow(function, function.output_schema), planned
    scored = selected.mapInArrow(predictor, predictor.schema)
    return (scored.toDF(*planned.schema.fieldNames()) if rename else scored), planned


# bad_row_policy's arguments, in order.
_POLICY_ARGUMENTS = ("on_error", "max_bad_rows", "check_finite", "quarantine", "error_column")


def _has_arrow_udf() -> bool:
    from pyspark.sql import functions as F

    return hasattr(F, "arrow_udf")  # Spark 4.1+


def _with_outputs(
    df: Any, planned: Plan, original: list[str], input_stats: bool, progress: bool, share: str
) -> Any:
    """``df``'s ``original`` columns and the model's outputs, added as columns
    of an ``arrow_udf`` (the ``withColumn`` of every output): the kept columns
    stay in the JVM and only the inputs cross to Python: keeping every column
    this way took 0.76x (light) and 0.87x (tabular) the time of mapInArrow
    (benchmarks/RESULTS.md, "keeping every column"). Several outputs come as
    one struct, expanded."""
    from pyspark.sql import functions as F

    from .udf import model_column

    used = {c for spec in planned.specs for c in spec.column_list}
    # The first kept column names a failing row; it crosses too when it is a
    # number (an id: a few bytes a row) and not an input already.
    first = original[0] if original else None
    label = first if first is not None and first not in used and _is_small(df, first) else None
    column, _ = model_column(df, planned, label, input_stats, progress, share)
    kept = [F.col(quote(c)) for c in original]
    columns = planned.columns
    if len(columns) == 1:
        return df.select(*kept, column.alias(columns[0]))
    struct = "_torchspark_outputs"
    scored = df.select(*kept, column.alias(struct))
    return scored.select(*kept, *[F.col(struct).getField(n).alias(n) for n in columns])


def _is_small(df: Any, column: str) -> bool:
    from . import types

    return types.is_number(df.schema[column].dataType)
