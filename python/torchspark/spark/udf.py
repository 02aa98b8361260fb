"""``torch_udf``: a model as a column function on Spark's ``arrow_udf`` (Spark 4.1+).

Only the column arguments cross to Python; the other columns of the row stay
in the JVM. The body reuses the worker's :class:`ArrowPredictor` (engine
cache, device and thread binding, per-task records).
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from ..distribute import ModelRef, fetch, ship
from ..engine import Engine, Input
from ..export import check_module, export_cached
from ..inputs import Inputs
from . import connect
from . import outputs as out
from .bad_rows import RAISE, BadRowPolicy, bad_row_policy
from .environment import check_executor_python
from .monitor import Settings, settings
from .plan import arrow_batch_rows, check_engine_options, engine_inputs
from .report import function_name, new_run
from .shared.mode import Sharing, sharing
from .worker import ArrowPredictor


class _UdfFunction:
    """The body of an ``arrow_udf`` running a model: pyarrow arrays in, one array out.

    For :func:`torch_udf`, each argument is one positional model input of the
    given ``kinds`` (named ``_0``, ``_1``, ...). For :func:`predict`'s column
    route, ``specs`` read the arguments by ``names``; a last argument named
    ``label`` (the first kept column) is not a model input: it only names the
    row of an error.
    """

    def __init__(
        self,
        ref: ModelRef,
        kinds: Any,
        fields: list[str] | None,
        device: str,
        options: dict[str, Any],
        run: str,
        records: Any,
        specs: Inputs | None = None,
        names: list[str] | None = None,
        label: str | None = None,
        policy: BadRowPolicy = RAISE,
        output_types: list[Any] | None = None,
        outputs: list[str] | None = None,
        input_stats: bool = False,
        monitor: Settings | None = None,
        share: Sharing | None = None,
    ) -> None:
        self.ref = ref
        self.share = share
        self.kinds = kinds
        self.fields = fields  # struct field names, or None for one output
        self.device = device
        self.options = options
        self.run = run
        self.records = records
        self.fixed_specs = specs
        self.names = names
        self.label = label
        self.policy = policy
        self.output_types = output_types
        self.outputs = outputs  # the output names (for statistics); None: _out, _out_0, ...
        self.input_stats = input_stats
        self.monitor = monitor

    def specs(self, count: int) -> Inputs:
        if self.fixed_specs is not None:
            return self.fixed_specs
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
        if first is None and self.fixed_specs is None:
            return  # the number of columns is unknown, so are the inputs
        count = (
            len(self.names) if first is None else (len(first) if isinstance(first, tuple) else 1)
        )
        names = self.names or [f"_{i}" for i in range(count)]

        def batches() -> Iterator[Any]:
            if first is None:
                return
            for item in _chain(first, arrays):
                cols = list(item) if isinstance(item, tuple) else [item]
                yield pa.RecordBatch.from_arrays(cols, names=names)

        # The label column (an id) crosses in to name a failing row, not out again.
        predictor = ArrowPredictor(
            self.ref,
            self.specs(count),
            [],
            self.outputs,
            None,
            self.device,
            self.options,
            self.run,
            self.records,
            label=self.label,
            policy=self.policy,
            output_types=self.output_types,
            input_stats=self.input_stats,
            monitor=self.monitor,
            share=self.share,
        )
        for batch in predictor(batches()):
            yield self.column(batch)

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


def model_column(
    df: Any,
    planned: Any,
    label: str | None,
    input_stats: bool = False,
    progress: bool = False,
    share: str = "auto",
) -> tuple[Any, Any]:
    """The outputs of ``planned`` as one column of ``df`` on an ``arrow_udf``
    (a struct for several outputs) and its type: only the input columns (and
    ``label``) cross to Python, every other column stays in the JVM.
    ``input_stats``: the tasks record statistics of the numeric inputs. With
    live metrics (:mod:`.monitor`) and ``progress`` where on."""
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    from .plan import quote

    # The arguments keep their names in the batches the model reads (so errors
    # name the user's columns): Arrow field names are not parsed.
    columns = list(dict.fromkeys(c for spec in planned.specs for c in spec.column_list))
    names = list(columns)
    arguments = [F.col(quote(c)) for c in columns]
    if label is not None:
        names.append(label)
        arguments.append(F.col(quote(label)))
    columns_out = planned.columns  # the outputs, and the error column with on_error="null"
    fields = None if len(columns_out) == 1 else list(columns_out)
    nullable = planned.policy.on_error == "null"
    if fields is None:
        return_type = planned.column_types[0]
    else:
        return_type = T.StructType(
            [
                T.StructField(n, t, nullable=nullable)
                for n, t in zip(columns_out, planned.column_types, strict=True)
            ]
        )
    run, records = new_run(df.sparkSession)
    monitor = settings(df.sparkSession, run, df if progress else None)
    body = _UdfFunction(
        planned.ref,
        None,
        fields,
        planned.device,
        planned.options,
        run,
        records,
        specs=engine_inputs(planned.specs, planned.names),
        names=names,
        label=label,
        policy=planned.policy,
        output_types=planned.output_types,
        outputs=list(planned.outputs),
        input_stats=input_stats,
        monitor=monitor,
        share=sharing(df.sparkSession, share, planned.device),
    )

    return _arrow_udf(body, run, return_type)(*arguments), return_type


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
    on_error: str = "raise",
    max_bad_rows: int | float | None = None,
    check_finite: bool = False,
    share: str = "auto",
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
    ``on_error="null"`` gives rows that fail null outputs (their errors are
    counted in :func:`last_report`; a column has no room for them), with
    ``max_bad_rows`` and ``check_finite`` as in :func:`predict`; a column
    function cannot leave rows out, so ``"quarantine"`` needs :func:`predict`.
    ``share`` (``"executor"``, ``"task"``, ``"auto"``) places the engine as in
    :func:`predict`.

    >>> score = torchspark.torch_udf(path, return_type="float")
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

    if on_error == "quarantine":
        raise ValueError(
            "torch_udf: a column function cannot leave rows out, so on_error='quarantine' is "
            "predict's (torchspark.predict(df, model, inputs=..., on_error='quarantine')); "
            "use on_error='null' here"
        )
    policy = dataclasses.replace(
        bad_row_policy(on_error, max_bad_rows, check_finite), error_column=None
    )
    if inputs is not None and inputs != "gather":
        inputs = [inputs] if isinstance(inputs, str) else list(inputs)
    spark = SparkSession.getActiveSession()
    if spark is None:
        raise RuntimeError("torch_udf: no active SparkSession")
    batch_size = batch_size or arrow_batch_rows(spark)
    options = check_engine_options(batch_size, precision, engine_options)
    check_executor_python(spark)
    if not isinstance(model, (str, os.PathLike)):
        check_module(model, "torch_udf")
        if example is None:
            raise ValueError(
                f"torch_udf: a {type(model).__name__} module needs example= (its inputs for a "
                "few rows) to be exported; or pass the path of a model from torchspark.export"
            )
        model = export_cached(model, example)
    ref = ship(model, connect.files(spark), sha256)
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
    if policy.isolates and fields is not None:
        # A bad row's fields are null.
        return_type = T.StructType([T.StructField(f.name, f.dataType) for f in return_type])
    types = [f.dataType for f in return_type] if fields is not None else [return_type]
    run, records = new_run(spark)
    monitor = settings(spark, run)
    body = _UdfFunction(
        ref,
        inputs,
        fields,
        device,
        options,
        run,
        records,
        policy=policy,
        output_types=types,
        monitor=monitor,
        share=sharing(spark, share, device),
    )

    return _arrow_udf(body, run, return_type)


def _udf_type_from_example(
    ref: ModelRef, example: Any, output: str | Sequence[str], options: dict[str, Any]
) -> Any:
    from pyspark.sql import types as T

    probe_options = {**options, "max_delay_ms": 0.0}
    probe_options.pop("intra_op_threads", None)
    with Engine(fetch(ref), device="cpu", **probe_options) as ex:
        names, tensors = out.flatten(ex.run(example))
    outs = out.output_names(output, names, len(tensors))
    output_types = [out.spark_type(t, n) for t, n in zip(tensors, outs, strict=True)]
    if len(output_types) == 1:
        return output_types[0]
    fields = [T.StructField(n, t, nullable=False) for n, t in zip(outs, output_types, strict=True)]
    return T.StructType(fields)


def _arrow_udf(body: _UdfFunction, run: str, return_type: Any) -> Any:
    """The SCALAR_ITER ``arrow_udf`` running ``body``, named for its run in
    Spark's plans (see .report)."""
    from pyspark.sql import functions as F
    from pyspark.sql.functions import ArrowUDFType

    def torch_model(arrays: Iterator[Any]) -> Iterator[Any]:
        return body(arrays)

    torch_model.__name__ = function_name(run)
    with warnings.catch_warnings():
        # The function takes one or several columns, so it has no single type
        # hint; the explicit type is what Spark asks of such functions.
        warnings.filterwarnings("ignore", "It is preferred to specify type hints")
        return F.arrow_udf(
            torch_model, returnType=return_type, functionType=ArrowUDFType.SCALAR_ITER
        )
