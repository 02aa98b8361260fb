"""Scoring Spark DataFrames: ``predict``, ``arrow_predictor``, ``torch_udf``, ``last_report``.

Everything runs through Spark's Arrow paths (``mapInArrow``, ``arrow_udf``):
each Arrow batch Spark streams into a Python worker is handed, zero-copy, to
the native :class:`torchspark.Engine`, which converts, batches and runs the
model in C++ threads while the worker reads the next batch, so a task costs
about max(IPC, compute) rather than their sum. The model is loaded once per
Python worker and reused across tasks; each task binds to its GPU (from
``TaskContext.resources()``) or the CPU, and sizes torch's intra-op threads
from ``spark.task.cpus``.

Errors that can be found before the job starts are raised on the driver:
missing columns, column types the model cannot take, a model that does not
load or run on a probe batch, an output schema that does not match.

The examples in this module's docstrings run as written (the test suite runs
them against a local SparkSession); they share ``spark``, ``path`` and ``df``:

>>> import os, tempfile, torch, torchspark
>>> from pyspark.sql import SparkSession
>>> spark = SparkSession.builder.master("local[2]").getOrCreate()
>>> path = torchspark.export(torch.nn.Linear(3, 1), torch.randn(4, 3),
...                          os.path.join(tempfile.mkdtemp(), "model.pt"))
>>> df = spark.createDataFrame([(1, [1.0, 2.0, 3.0]), (2, [0.5, 0.5, 0.5])],
...                            "id long, x array<float>")
>>> scored = torchspark.predict(df, path, inputs="x")
>>> scored.columns
['id', 'prediction']
>>> scored.count()
2
"""

from __future__ import annotations

import collections
import dataclasses
import math
import os
import socket
import sys
import threading
import time
import uuid
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .distribute import ModelRef, fetch, ship
from .engine import Engine, Input, check_argument_names, input_tensors, size_intra_op_threads
from .export import argument_names, check_module, export_cached

__all__ = ["ArrowPredictor", "Report", "arrow_predictor", "last_report", "predict", "torch_udf"]

_PROBE_ROWS = 16
_LATENCY_SAMPLES = 256  # per task, sent back to the driver

# ---------------------------------------------------------------------------
# Inputs: what the user wrote -> positional Input specs


def _as_input(spec: Any, where: str) -> Input:
    if isinstance(spec, Input):
        return spec
    if isinstance(spec, str):
        return Input(spec)
    if isinstance(spec, Sequence) and spec and all(isinstance(c, str) for c in spec):
        return Input(list(spec))
    raise TypeError(
        f"{where}: expected a column name, a list of column names or a torchspark.Input, "
        f"got {spec!r}"
    )


def _plan_inputs(inputs: Any) -> tuple[list[Input], list[str] | None]:
    """Positional Inputs and, for a dict, the model argument name of each."""
    if isinstance(inputs, Mapping):
        if not inputs:
            raise ValueError("inputs: expected at least one input, got an empty dict")
        names = [str(k) for k in inputs]
        return [_as_input(v, f"inputs[{k!r}]") for k, v in inputs.items()], names
    if isinstance(inputs, (str, Input)):
        return [_as_input(inputs, "inputs")], None
    if isinstance(inputs, Sequence) and inputs:
        if all(isinstance(c, str) for c in inputs):
            return [Input(list(inputs))], None  # several scalar columns: one [N, F] input
        return [_as_input(v, f"inputs[{i}]") for i, v in enumerate(inputs)], None
    raise TypeError(
        "inputs: expected a column name, a list of column names (gathered to [N, F]), "
        "a list of torchspark.Input (one per model input) or a dict by argument name; "
        f"got {inputs!r}"
    )


def _check_column_types(schema: Any, specs: Sequence[Input]) -> None:
    """Raise on the driver for missing columns and types an Input cannot take."""
    from pyspark.sql import types as T

    numeric = (
        T.ByteType,
        T.ShortType,
        T.IntegerType,
        T.LongType,
        T.FloatType,
        T.DoubleType,
        T.BooleanType,
    )
    integral = (T.ByteType, T.ShortType, T.IntegerType, T.LongType)
    fields = {f.name: f.dataType for f in schema.fields}

    def innermost(t: Any) -> Any:
        while isinstance(t, T.ArrayType):
            t = t.elementType
        return t

    for spec in specs:
        for column in spec.column_list:
            if column not in fields:
                raise ValueError(
                    f"input column '{column}': not in the DataFrame; its columns are {list(fields)}"
                )
            t = fields[column]
            kind = spec.resolved_kind
            if kind == "gather":
                ok, expected = isinstance(t, numeric), "a numeric or boolean scalar"
            elif kind == "pad":
                ok = isinstance(t, T.ArrayType) and isinstance(t.elementType, numeric)
                ok = ok and (spec.dtype is not None or isinstance(t.elementType, integral))
                expected = "array<int> or array<bigint> (token ids)"
            else:
                ok = isinstance(innermost(t), numeric)
                expected = "a number or a (nested) array of numbers"
            if not ok:
                raise TypeError(
                    f"input column '{column}' (kind '{kind}'): expected {expected}, got "
                    f"{t.simpleString()}"
                )


# ---------------------------------------------------------------------------
# Outputs: tensors -> Arrow arrays and Spark types


def _exportable(t: torch.Tensor) -> torch.Tensor:
    """A tensor whose dtype Spark has: half -> float, uint8 -> int16."""
    if t.dtype in (torch.float16, torch.bfloat16):
        return t.float()
    if t.dtype == torch.uint8:
        return t.to(torch.int16)
    return t


def _to_arrow(t: torch.Tensor) -> Any:
    from .arrow import from_tensor

    return from_tensor(_exportable(t).detach())


def _spark_type(t: torch.Tensor, name: str) -> Any:
    from pyspark.sql import types as T

    scalar = {
        torch.float32: T.FloatType(),
        torch.float64: T.DoubleType(),
        torch.int64: T.LongType(),
        torch.int32: T.IntegerType(),
        torch.int16: T.ShortType(),
        torch.int8: T.ByteType(),
        torch.bool: T.BooleanType(),
    }
    dtype = _exportable(t).dtype
    if dtype not in scalar:
        raise TypeError(f"output '{name}': dtype {t.dtype} has no Spark type")
    result = scalar[dtype]
    for _ in range(t.dim() - 1):
        result = T.ArrayType(result, containsNull=False)
    return result


def _output_names(output: str | Sequence[str], names: list[str], count: int) -> list[str]:
    if not isinstance(output, str):
        given = list(output)
        if len(given) != count:
            raise ValueError(
                f"output: the model returns {count} outputs but {len(given)} names were given: "
                f"{given}"
            )
        return given
    if any(names):
        return list(names)  # a dict output: its keys
    return [output] if count == 1 else [f"{output}_{i}" for i in range(count)]


def _flatten(result: Any) -> tuple[list[str], list[torch.Tensor]]:
    if isinstance(result, torch.Tensor):
        return [""], [result]
    if isinstance(result, dict):
        return list(result), list(result.values())
    return [""] * len(result), list(result)


# ---------------------------------------------------------------------------
# The per-worker side: model cache, device and thread binding, metrics

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
    from .engine import _resolve_device

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


def _sample(values: list[float], limit: int) -> list[float]:
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


def _new_run(sc: Any) -> tuple[str, Any]:
    from pyspark.accumulators import AccumulatorParam

    param = type("_TorchSparkRecords", (_ListParam, AccumulatorParam), {})()
    accumulator = sc.accumulator([], param)
    run = uuid.uuid4().hex[:12]
    with _runs_lock:
        _runs[run] = accumulator
    return run, accumulator


# ---------------------------------------------------------------------------
# The mapInArrow function


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
        inject_crash_partition: int | None = None,
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
        self._inject_crash_partition = inject_crash_partition

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
        crash = (
            task is not None
            and self._inject_crash_partition == task.partitionId()
            and task.attemptNumber() == 0
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
                names, tensors = _flatten(result)
                arrays = [batch.column(name) for name in self.keep]
                arrays += [_to_arrow(t) for t in tensors]
                outputs = self.outputs or _output_names("_out", names, len(tensors))
                latencies.append((time.perf_counter() - submitted) * 1e3)
                rows += batch.num_rows
                count += 1
                yield _record_batch(arrays, self.keep + outputs)
                if crash:
                    os._exit(17)  # tests: the worker dies after its first output batch
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
                "latency_ms": _sample(latencies, _LATENCY_SAMPLES),
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


def _record_batch(arrays: list[Any], names: list[str]) -> Any:
    import pyarrow as pa

    return pa.RecordBatch.from_arrays(arrays, names=names)


# ---------------------------------------------------------------------------
# Driver side


@dataclass
class _Plan:
    ref: ModelRef
    specs: list[Input]
    keep: list[str]
    outputs: list[str]
    output_types: list[Any]
    schema: Any  # StructType of keep + outputs
    options: dict[str, Any]
    device: str


def _arrow_batch_rows(df_or_session: Any) -> int:
    """Spark's Arrow batch size in a DataFrame's session (10,000 unless configured)."""
    session = getattr(df_or_session, "sparkSession", df_or_session)
    value = session.conf.get("spark.sql.execution.arrow.maxRecordsPerBatch", "10000")
    rows = int(value)
    return rows if rows > 0 else 10000  # <= 0 means unlimited in Spark: one batch per task


def _engine_options(batch_size: int, precision: str, options: Mapping[str, Any]) -> dict[str, Any]:
    allowed = {
        "max_tokens",
        "max_delay_ms",
        "threads",
        "intra_op_threads",
        "inflight",
        "static_batch",
        "sort_window",
        "per_token",
    }
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise TypeError(f"unexpected engine options {unknown}; expected some of {sorted(allowed)}")
    return {"batch_size": batch_size, "precision": precision, **options}


def _plan(
    df: Any,
    model: str | os.PathLike[str] | torch.nn.Module,
    inputs: Any,
    output: str | Sequence[str],
    keep: Sequence[str] | None,
    device: str,
    options: dict[str, Any],
    sha256: str | None,
    schema: Any,
) -> _Plan:

    specs, arg_names = _plan_inputs(inputs)
    _check_column_types(df.schema, specs)
    used = [c for spec in specs for c in spec.column_list]
    if keep is None:
        keep = [c for c in df.columns if c not in used]
    else:
        keep = list(keep)
        missing = [c for c in keep if c not in df.columns]
        if missing:
            raise ValueError(f"keep: columns {missing} are not in the DataFrame {df.columns}")
    sample = df.selectExpr(*[_quote(c) for c in dict.fromkeys(used)]).limit(_PROBE_ROWS)
    probe = None
    if not isinstance(model, (str, os.PathLike)):
        # A module: exported here, on rows of the real data, verified against
        # the module, cached by its content, then shipped as a file.
        check_module(model, "model")
        if arg_names is not None:
            arguments = argument_names(model, len(specs))
            specs = _order_by_arguments(specs, arg_names, arguments, type(model).__name__)
            arg_names = None
        probe = _probe_table(sample)
        if probe.num_rows == 0:
            raise ValueError(
                f"model {type(model).__name__}: the DataFrame is empty, so there are no rows to "
                "export the module with; export it with torchspark.export and pass the file"
            )
        batch = probe.combine_chunks().to_batches()[0]
        model = export_cached(model, input_tensors(batch, specs))
    ref = ship(model, df.sparkSession.sparkContext, sha256)
    # The same model (by digest) over the same input types was probed already
    # in this session: its output schema holds, no model load or probe job.
    types = [(c, df.schema[c].dataType.simpleString()) for c in dict.fromkeys(used)]
    key = (ref, device, repr(specs), arg_names and tuple(arg_names), repr(types), repr(output))
    key += (repr(sorted(options.items())), repr(schema))
    cached = _probed.get(key) if ref.sha256 else None
    if cached is not None:
        specs, outputs, output_types = cached
        return _plan_of(df, ref, specs, keep, outputs, output_types, options, device)

    # The model loads on the driver first: a file that is not a model fails
    # here, before any Spark job runs.
    from . import _C

    probe_device = torch.device("cpu" if device == "auto" else device)
    path = fetch(ref)
    loaded = _C.load_model(path, probe_device, 1)
    if arg_names is not None:
        specs = _order_by_arguments(specs, arg_names, list(loaded.input_names), ref.name)

    # Then one probe batch: the model runs on it, its outputs give the schema.
    if probe is None:
        probe = _probe_table(sample)
    if probe.num_rows == 0:
        outputs, output_types = _outputs_of_empty(df, schema, ref)
        return _plan_of(df, ref, specs, keep, outputs, output_types, options, device)
    batch = probe.combine_chunks().to_batches()[0]
    probe_options = {**options, "max_delay_ms": 0.0}
    probe_options.pop("intra_op_threads", None)  # the driver's threads are left alone
    try:
        with Engine(path, device=probe_device, inputs=specs, _model=loaded, **probe_options) as ex:
            names, tensors = _flatten(ex.run(batch))
    except Exception as e:
        raise _probe_error(e, ref, len(probe)) from e
    outputs = _output_names(output, names, len(tensors))
    output_types = [_spark_type(t, n) for t, n in zip(tensors, outputs, strict=True)]
    if schema is not None:
        _check_schema(schema, outputs, output_types)
    if ref.sha256:
        _probed[key] = (specs, outputs, output_types)
    return _plan_of(df, ref, specs, keep, outputs, output_types, options, device)


# What probe batches showed, by model digest and input types (see _plan).
_probed: dict[tuple[Any, ...], tuple[list[Input], list[str], list[Any]]] = {}


def _plan_of(
    df: Any,
    ref: ModelRef,
    specs: list[Input],
    keep: list[str],
    outputs: list[str],
    output_types: list[Any],
    options: dict[str, Any],
    device: str,
) -> _Plan:
    from pyspark.sql import types as T

    clash = [n for n in outputs if n in keep]
    if clash or len(set(outputs)) != len(outputs):
        raise ValueError(
            f"output columns {outputs} clash with each other or with kept columns {keep}; "
            "name them with output=[...] or drop them with keep=[...]"
        )
    fields = [df.schema[c] for c in keep] + [
        T.StructField(n, t, nullable=False) for n, t in zip(outputs, output_types, strict=True)
    ]
    return _Plan(ref, specs, keep, outputs, output_types, T.StructType(fields), options, device)


def _outputs_of_empty(df: Any, schema: Any, ref: ModelRef) -> tuple[list[str], list[Any]]:
    """An empty DataFrame has no probe batch: the output schema must be given."""
    if schema is None:
        raise ValueError(
            f"model '{ref.name}': the DataFrame is empty, so no probe batch can show what the "
            "model returns; pass schema= (the output columns, e.g. 'prediction float')"
        )
    struct = _as_struct(schema)
    return [f.name for f in struct.fields], [f.dataType for f in struct.fields]


def _quote(name: str) -> str:
    """A column's exact name as a SQL identifier (dots and backticks are not parsed).

    Expressions go to Spark as SQL strings, in one call per select: building
    them column by column costs a py4j round trip each (~0.2 s for 64 columns).
    """
    return "`" + name.replace("`", "``") + "`"


def _probe_table(sample: Any) -> Any:
    """The probe rows as a pyarrow Table (one small Spark job)."""
    # toArrow() is Spark 4.0+; Spark 3.5 has the same under a private name.
    return sample.toArrow() if hasattr(sample, "toArrow") else _collect_arrow(sample)


def _collect_arrow(df: Any) -> Any:
    import pyarrow as pa

    batches = df._collect_as_arrow()
    if batches:
        return pa.Table.from_batches(batches)
    from pyspark.sql.pandas.types import to_arrow_schema

    return to_arrow_schema(df.schema).empty_table()


def _probe_error(error: Exception, ref: ModelRef, rows: int) -> Exception:
    """The same exception type, saying it happened on the driver's probe batch."""
    message = f"model '{ref.name}' on a probe batch of {rows} rows (on the driver): {error}"
    try:
        return type(error)(message)
    except Exception:
        return RuntimeError(message)


def _order_by_arguments(
    specs: list[Input], names: list[str], arguments: list[str], model: str
) -> list[Input]:
    if not arguments:
        raise ValueError(
            f"model '{model}': inputs given by name {names}, but the model does not record "
            "its argument names; pass inputs as a list in argument order"
        )
    check_argument_names(names, arguments, f"model '{model}'")
    by_name = dict(zip(names, specs, strict=True))
    return [by_name[a] for a in arguments]


def _as_struct(schema: Any) -> Any:
    from pyspark.sql import types as T

    if isinstance(schema, str):
        schema = T._parse_datatype_string(schema)
    if not isinstance(schema, T.StructType):
        raise TypeError(f"schema: expected a StructType or a DDL string, got {schema!r}")
    return schema


def _check_schema(schema: Any, outputs: list[str], types: list[Any]) -> None:
    schema = _as_struct(schema)
    given = [(f.name, f.dataType) for f in schema.fields]
    derived = list(zip(outputs, types, strict=True))

    def strip(t: Any) -> str:
        return t.simpleString()

    if [(n, strip(t)) for n, t in given] != [(n, strip(t)) for n, t in derived]:
        raise ValueError(
            "schema: the model's outputs on the probe batch are "
            + ", ".join(f"{n} {strip(t)}" for n, t in derived)
            + " but the schema says "
            + ", ".join(f"{n} {strip(t)}" for n, t in given)
        )


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
    **engine_options: Any,
) -> ArrowPredictor:
    """The function to hand to ``df.mapInArrow`` yourself; its ``.schema`` is the output schema.

    ``df_or_schema`` is the DataFrame it will be applied to (its schema and a
    probe batch derive the output schema). Arguments are those of
    :func:`predict`.

    >>> fn = torchspark.arrow_predictor(df, path, inputs="x")
    >>> fn.schema.simpleString()
    'struct<id:bigint,prediction:array<float>>'
    >>> df.mapInArrow(fn, fn.schema).count()
    2
    """
    batch_size = batch_size or _arrow_batch_rows(df_or_schema)
    options = _engine_options(batch_size, precision, engine_options)
    plan = _plan(df_or_schema, model, inputs, output, keep, device, options, sha256, schema)
    return _predictor(df_or_schema, plan)


def _predictor(
    df: Any, plan: _Plan, alias: Mapping[str, str] | None = None, crash: int | None = None
) -> ArrowPredictor:
    """The mapInArrow function of ``plan``, its columns renamed by ``alias``."""
    from pyspark.sql import types as T

    alias = alias or {}
    run, records = _new_run(df.sparkSession.sparkContext)
    schema = T.StructType(
        [T.StructField(alias.get(f.name, f.name), f.dataType, f.nullable) for f in plan.schema]
    )
    return ArrowPredictor(
        plan.ref,
        [_renamed(spec, alias) for spec in plan.specs],
        [alias.get(c, c) for c in plan.keep],
        plan.outputs,
        schema,
        plan.device,
        plan.options,
        run,
        records,
        crash,
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
    _inject_crash_partition: int | None = None,
    **engine_options: Any,
) -> Any:
    """Score ``df`` with a TorchScript or AOTInductor model; returns a new DataFrame.

    Args:
        df: the DataFrame to score.
        model: a local path (shipped to the executors with ``addFile``), the
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
            names each output. 2-D outputs become ``array<float>`` columns.
        keep: columns passed through (default: every column not used as input).
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

    The probe (one small Spark job and a model load on the driver) runs once
    per model file (by digest), input column types and options in a driver
    session; later calls reuse what it showed, so problems it would catch in
    their data (a null in the first rows, say) surface in the job instead.

    Metrics of the tasks (rows, throughput, latency percentiles per Arrow batch,
    device, batch size) are collected on the driver: see :func:`last_report`.

    >>> scored = torchspark.predict(df, path, inputs="x", keep=["id"], output="score")
    >>> out = os.path.join(tempfile.mkdtemp(), "scored.parquet")
    >>> scored.write.parquet(out)
    >>> torchspark.last_report().rows
    2
    """
    batch_size = batch_size or _arrow_batch_rows(df)
    options = _engine_options(batch_size, precision, engine_options)
    df, inputs, keep = _packed(df, inputs, keep)
    plan = _plan(df, model, inputs, output, keep, device, options, sha256, schema)
    used = [c for spec in plan.specs for c in spec.column_list]
    shipped = list(dict.fromkeys(plan.keep + used))  # only the columns needed cross to Python
    # mapInArrow resolves its input columns by parsing their names, so a name
    # with a dot fails there: such DataFrames cross under plain aliases and get
    # their names back afterwards.
    rename = any("." in c or "`" in c for c in shipped)
    alias = {c: f"_torchspark_{i}" for i, c in enumerate(shipped)} if rename else {}
    predictor = _predictor(df, plan, alias, _inject_crash_partition)
    selected = df.selectExpr(*[f"{_quote(c)} AS {_quote(alias.get(c, c))}" for c in shipped])
    scored = selected.mapInArrow(predictor, predictor.schema)
    return scored.toDF(*plan.schema.fieldNames()) if rename else scored


_SPARK_DTYPES = {
    torch.float32: "float",
    torch.float64: "double",
    torch.float16: "float",
    torch.bfloat16: "float",
    torch.int64: "bigint",
    torch.int32: "int",
    torch.int16: "smallint",
    torch.int8: "tinyint",
    torch.bool: "boolean",
}


def _packed(df: Any, inputs: Any, keep: Sequence[str] | None) -> tuple[Any, Any, Any]:
    """Gathered inputs with ``pack=True`` become one array column built in the JVM."""
    specs, names = _plan_inputs(inputs)
    if not any(spec.pack for spec in specs):
        return df, inputs, keep
    _check_column_types(df.schema, specs)
    if keep is None:  # the default is decided on the columns the user named
        used = {c for spec in specs for c in spec.column_list}
        keep = [c for c in df.columns if c not in used]
    packed = []
    for i, spec in enumerate(specs):
        if not spec.pack:
            packed.append(spec)
            continue
        dtype = spec.dtype or torch.float32
        if dtype not in _SPARK_DTYPES:
            raise TypeError(
                f"Input({spec.column_list}).pack: dtype {dtype} has no Spark type; expected "
                f"one of {list(_SPARK_DTYPES)}"
            )
        spark_type = _SPARK_DTYPES[dtype]
        elements = [f"CAST({_quote(c)} AS {spark_type})" for c in spec.column_list]
        if spec.nulls == "fill":
            fill = _sql_literal(spec.fill, spark_type)
            elements = [f"COALESCE({e}, {fill})" for e in elements]
        name = f"_torchspark_packed_{i}"
        df = df.selectExpr("*", f"array({', '.join(elements)}) AS {name}")
        # A null here (nulls="error") is reported in this column, input i.
        packed.append(Input(name, dtype=spec.dtype, nulls=spec.nulls, fill=spec.fill))
    return df, (dict(zip(names, packed, strict=True)) if names else packed), keep


def _sql_literal(value: float | int | bool, spark_type: str) -> str:
    """``value`` as a SQL literal of ``spark_type`` (NaN and infinities included)."""
    if spark_type == "boolean":
        return "true" if value else "false"
    if spark_type in ("float", "double"):
        number = float(value)
        if math.isnan(number):
            text = "NaN"
        elif math.isinf(number):
            text = "Infinity" if number > 0 else "-Infinity"
        else:
            text = repr(number)
        return f"CAST('{text}' AS {spark_type})"
    return f"CAST({int(value)} AS {spark_type})"


def _renamed(spec: Input, alias: Mapping[str, str]) -> Input:
    columns = [alias.get(c, c) for c in spec.column_list]
    return dataclasses.replace(
        spec, columns=columns[0] if isinstance(spec.columns, str) else columns
    )


# ---------------------------------------------------------------------------
# Reports


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


# ---------------------------------------------------------------------------
# Column functions


class _UdfFunction:
    """The body of a :func:`torch_udf`: pyarrow arrays in, one array out."""

    def __init__(
        self,
        ref: ModelRef,
        kinds: Any,
        fields: list[str] | None,
        device: str,
        options: dict[str, Any],
        run: str,
        records: Any,
    ) -> None:
        self.ref = ref
        self.kinds = kinds
        self.fields = fields  # struct field names, or None for one output
        self.device = device
        self.options = options
        self.run = run
        self.records = records

    def specs(self, count: int) -> list[Input]:
        names = [f"_{i}" for i in range(count)]
        if self.kinds == "gather":
            return [Input(names, kind="gather")]
        kinds = self.kinds or ["tensor"] * count
        if len(kinds) != count:
            raise ValueError(
                f"torch_udf('{self.ref.name}'): {len(kinds)} input kinds {kinds} for "
                f"{count} columns"
            )
        return [Input(n, kind=k) for n, k in zip(names, kinds, strict=True)]

    def __call__(self, arrays: Iterator[Any]) -> Iterator[Any]:
        import pyarrow as pa

        first = next(iter(arrays), None)
        if first is None:
            return
        count = len(first) if isinstance(first, tuple) else 1
        names = [f"_{i}" for i in range(count)]

        def batches() -> Iterator[Any]:
            for item in _chain(first, arrays):
                cols = list(item) if isinstance(item, tuple) else [item]
                yield pa.RecordBatch.from_arrays(cols, names=names)

        predictor = ArrowPredictor(
            self.ref,
            self.specs(count),
            [],
            None,
            None,
            self.device,
            self.options,
            self.run,
            self.records,
        )
        for out in predictor(batches()):
            yield self.column(out)

    def column(self, batch: Any) -> Any:
        import pyarrow as pa

        expected = 1 if self.fields is None else len(self.fields)
        if batch.num_columns != expected:
            raise ValueError(
                f"torch_udf('{self.ref.name}'): the model returned {batch.num_columns} outputs "
                f"but the return type has {expected}"
                + ("" if self.fields is None else f" fields {self.fields}")
            )
        if self.fields is None:
            return batch.column(0)
        return pa.StructArray.from_arrays(batch.columns, names=self.fields)


def _chain(first: Any, rest: Iterator[Any]) -> Iterator[Any]:
    yield first
    yield from rest


def torch_udf(
    model: str | os.PathLike[str] | torch.nn.Module,
    *,
    return_type: Any = None,
    example: Any = None,
    output: str | Sequence[str] = "prediction",
    inputs: str | Sequence[str] | None = None,
    device: str = "auto",
    batch_size: int | None = None,
    precision: str = "fp32",
    sha256: str | None = None,
    **engine_options: Any,
) -> Any:
    """A column function running ``model``, built on Spark's ``arrow_udf`` (Spark 4.1+).

    Each column argument is one positional model input (``inputs=["tensor",
    "pad", ...]`` sets each one's kind; ``inputs="gather"`` gathers all the
    columns into one ``[N, F]`` input). ``return_type`` is the Spark type of
    the result: a model with several outputs returns a struct, its fields in
    output order. Without ``return_type``, ``example`` (the model's inputs for
    a couple of rows: a tensor or a tuple of tensors) runs once on the driver
    to derive it; several outputs then make a struct whose fields are named
    like :func:`predict`'s columns (``output``). ``model`` may be an
    ``nn.Module`` with ``example``: it is exported on the driver with that
    example and verified against the module, as in :func:`predict`.

    >>> score = torchspark.torch_udf(path, return_type="array<float>")
    >>> df.withColumn("score", score("x")).columns
    ['id', 'x', 'score']
    """
    import pyspark
    from pyspark.sql import SparkSession
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    if not hasattr(F, "arrow_udf"):
        raise RuntimeError(
            "torchspark.torch_udf needs Spark 4.1 or newer (pyspark.sql.functions.arrow_udf); "
            f"this is pyspark {pyspark.__version__}. Use torchspark.predict, which runs on "
            "mapInArrow (Spark 3.3+)."
        )
    from pyspark.sql.functions import ArrowUDFType

    if inputs is not None and inputs != "gather":
        inputs = [inputs] if isinstance(inputs, str) else list(inputs)
    spark = SparkSession.getActiveSession()
    if spark is None:
        raise RuntimeError("torch_udf: no active SparkSession")
    batch_size = batch_size or _arrow_batch_rows(spark)
    options = _engine_options(batch_size, precision, engine_options)
    if not isinstance(model, (str, os.PathLike)):
        check_module(model, "torch_udf")
        if example is None:
            raise ValueError(
                f"torch_udf: a {type(model).__name__} module needs example= (its inputs for a "
                "few rows) to be exported; or pass the path of a model from torchspark.export"
            )
        model = export_cached(model, example)
    ref = ship(model, spark.sparkContext, sha256)
    if return_type is None:
        if example is None:
            raise ValueError(
                f"torch_udf('{ref.name}'): give return_type (e.g. 'float', 'array<float>') or "
                "example= (model inputs for a few rows) to derive it"
            )
        return_type = _udf_type_from_example(ref, example, output, options)
    elif isinstance(return_type, str):
        return_type = T._parse_datatype_string(return_type)
    fields = return_type.fieldNames() if isinstance(return_type, T.StructType) else None
    run, records = _new_run(spark.sparkContext)
    body = _UdfFunction(ref, inputs, fields, device, options, run, records)

    def torch_model(arrays: Iterator[Any]) -> Iterator[Any]:
        return body(arrays)

    with warnings.catch_warnings():
        # The function takes one or several columns, so it has no single type
        # hint; the explicit type is what Spark asks of such functions.
        warnings.filterwarnings("ignore", "It is preferred to specify type hints")
        return F.arrow_udf(
            torch_model, returnType=return_type, functionType=ArrowUDFType.SCALAR_ITER
        )


def _udf_type_from_example(
    ref: ModelRef, example: Any, output: str | Sequence[str], options: dict[str, Any]
) -> Any:
    from pyspark.sql import types as T

    probe_options = {**options, "max_delay_ms": 0.0}
    probe_options.pop("intra_op_threads", None)
    with Engine(fetch(ref), device="cpu", **probe_options) as ex:
        names, tensors = _flatten(ex.run(example))
    outs = _output_names(output, names, len(tensors))
    types = [_spark_type(t, n) for t, n in zip(tensors, outs, strict=True)]
    if len(types) == 1:
        return types[0]
    fields = [T.StructField(n, t, nullable=False) for n, t in zip(outs, types, strict=True)]
    return T.StructType(fields)
