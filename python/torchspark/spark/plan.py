"""Driver-side planning: inputs, column checks, the probe batch, the output schema.

Everything that can be found before a job starts is raised here, on the
driver: missing columns, column types an input cannot take, a model that does
not load or run on a probe batch, outputs that do not match ``schema=``.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..distribute import ModelRef, fetch, ship
from ..engine import Engine, Input
from ..export import argument_names, check_module, export_cached
from ..inputs import Inputs, feed, input_tensors
from . import connect, types
from . import outputs as out
from .bad_rows import RAISE, BadRowPolicy, isolate

_PROBE_ROWS = 16

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


def plan_inputs(inputs: Any) -> tuple[list[Input], list[str] | None]:
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


def check_column_types(schema: Any, specs: Sequence[Input]) -> None:
    """Raise on the driver for missing columns and types an Input cannot take."""
    from pyspark.sql import types as T

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
                ok, expected = types.is_number(t), "a numeric or boolean scalar"
            elif kind == "image":
                ok = isinstance(t, T.BinaryType) or _is_image_struct(t)
                expected = "binary (encoded images) or the struct of Spark's image source"
            elif kind == "text":
                ok = isinstance(t, T.StringType)
                expected = "string (text to tokenize)"
            elif kind == "pad":
                ok = isinstance(t, T.ArrayType) and types.is_number(t.elementType)
                ok = ok and (spec.dtype is not None or types.is_integral(t.elementType))
                expected = "array<int> or array<bigint> (token ids)"
            else:
                ok = types.is_number(innermost(t))
                expected = "a number or a (nested) array of numbers"
            if not ok:
                raise TypeError(
                    f"input column '{column}' (kind '{kind}'): expected {expected}, got "
                    f"{t.simpleString()}"
                )


def _is_image_struct(t: Any) -> bool:
    """Spark's image source schema: origin, height, width, nChannels, mode, data."""
    from pyspark.sql import types as T

    names = {"origin", "height", "width", "nChannels", "mode", "data"}
    return isinstance(t, T.StructType) and names <= set(t.fieldNames())


# ---------------------------------------------------------------------------
# Options, names


def arrow_batch_rows(df_or_session: Any) -> int:
    """Spark's Arrow batch size in a DataFrame's session (10,000 unless configured)."""
    session = getattr(df_or_session, "sparkSession", df_or_session)
    value = session.conf.get("spark.sql.execution.arrow.maxRecordsPerBatch", "10000")
    rows = int(value)
    return rows if rows > 0 else 10000  # <= 0 means unlimited in Spark: one batch per task


def check_engine_options(
    batch_size: int, precision: str, options: Mapping[str, Any]
) -> dict[str, Any]:
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


def quote(name: str) -> str:
    """A column's exact name as a SQL identifier (dots and backticks are not parsed).

    Expressions go to Spark as SQL strings, in one call per select: building
    them column by column costs a py4j round trip each (~0.2 s for 64 columns).
    """
    return "`" + name.replace("`", "``") + "`"


# ---------------------------------------------------------------------------
# The plan


@dataclass
class Plan:
    ref: ModelRef
    specs: list[Input]
    names: list[str] | None  # the model argument each spec feeds, when given by name
    keep: list[str]
    outputs: list[str]
    output_types: list[Any]
    schema: Any  # StructType of keep + outputs
    options: dict[str, Any]
    device: str
    policy: BadRowPolicy = RAISE  # what becomes of bad rows

    @property
    def columns(self) -> list[str]:
        """The columns the model adds: its outputs, and the error column with on_error="null"."""
        extra = self.policy.error_column_added
        return [*self.outputs, extra] if extra else list(self.outputs)

    @property
    def column_types(self) -> list[Any]:
        from pyspark.sql import types as T

        extra = [T.StringType()] if self.policy.error_column_added else []
        return [*self.output_types, *extra]


# What probe batches showed, by model digest and input types (see plan).
_probed: dict[tuple[Any, ...], tuple[list[str], list[Any]]] = {}


def plan(
    df: Any,
    model: str | os.PathLike[str] | torch.nn.Module,
    inputs: Any,
    output: str | Sequence[str],
    keep: Sequence[str] | None,
    device: str,
    options: dict[str, Any],
    sha256: str | None,
    schema: Any,
    policy: BadRowPolicy = RAISE,
) -> Plan:
    specs, arg_names = plan_inputs(inputs)
    check_column_types(df.schema, specs)
    used = [c for spec in specs for c in spec.column_list]
    if keep is None:
        keep = list(df.columns)  # every column, as withColumn does
    else:
        keep = list(keep)
        missing = [c for c in keep if c not in df.columns]
        if missing:
            raise ValueError(f"keep: columns {missing} are not in the DataFrame {df.columns}")
    sc = connect.files(df.sparkSession)  # a SparkContext, or a Connect session's artifacts
    # Tokenizer files reach the executors as model files do.
    specs = [_ship_tokenizer(spec, sc) for spec in specs]
    # The first kept column (usually an id) names a failing probe row.
    label = keep[0] if keep else None
    probed_columns = dict.fromkeys([*used, *([label] if label else [])])
    sample = df.selectExpr(*[quote(c) for c in probed_columns]).limit(_PROBE_ROWS)
    probe = None
    if not isinstance(model, (str, os.PathLike)):
        # A module: exported here, on rows of the real data, verified against
        # the module, cached by its content, then shipped as a file.
        check_module(model, "model")
        probe = _probe_table(sample)
        if probe.num_rows == 0:
            raise ValueError(
                f"model {type(model).__name__}: the DataFrame is empty, so there are no rows to "
                "export the module with; export it with torchspark.export and pass the file"
            )
        batch = probe.combine_chunks().to_batches()[0]
        arguments = argument_names(model)
        example = input_tensors(batch, engine_inputs(specs, arg_names), arguments)
        model = export_cached(model, example)
    ref = ship(model, sc, sha256)
    # The same model (by digest) over the same input types was probed already
    # in this session: its output schema holds, no model load or probe job.
    column_types = [(c, df.schema[c].dataType.simpleString()) for c in dict.fromkeys(used)]
    key = (ref, device, repr(specs), arg_names and tuple(arg_names), repr(column_types))
    key += (repr(output), repr(sorted(options.items())), repr(schema))
    cached = _probed.get(key) if ref.sha256 else None
    if cached is not None:
        outputs, output_types = cached
        return _plan_of(
            df, ref, specs, arg_names, keep, outputs, output_types, options, device, policy
        )

    # The model loads on the driver first: a file that is not a model fails
    # here, before any Spark job runs.
    from .. import _C

    probe_device = torch.device("cpu" if device == "auto" else device)
    path = fetch(ref)
    loaded = _C.load_model(path, probe_device, 1)
    # The inputs must feed the model's arguments (an error here names them).
    feed(engine_inputs(specs, arg_names), list(loaded.input_names), f"model '{ref.name}'")

    # Then one probe batch: the model runs on it, its outputs give the schema.
    if probe is None:
        probe = _probe_table(sample)
    if probe.num_rows == 0:
        outputs, output_types = _outputs_of_empty(df, schema, ref)
        return _plan_of(
            df, ref, specs, arg_names, keep, outputs, output_types, options, device, policy
        )
    batch = probe.combine_chunks().to_batches()[0]
    probe_options = {**options, "max_delay_ms": 0.0}
    probe_options.pop("intra_op_threads", None)  # the driver's threads are left alone
    probe_inputs = engine_inputs(specs, arg_names)
    try:
        with Engine(
            path, device=probe_device, inputs=probe_inputs, _model=loaded, **probe_options
        ) as ex:
            names, tensors = _probe_outputs(ex, batch, policy)
    except Exception as e:
        shape_error = _shape_error(e, ref, len(probe), specs, batch)
        if shape_error is not None:
            raise shape_error from None  # the message says it all; no TorchScript trace
        from .worker import _locate

        _locate(e, batch, 0, "the driver's probe", label)
        raise _probe_error(e, ref, len(probe)) from e
    outputs = out.output_names(output, names, len(tensors))
    output_types = [out.spark_type(t, n) for t, n in zip(tensors, outputs, strict=True)]
    if schema is not None:
        _check_schema(schema, outputs, output_types)
    if ref.sha256:
        _probed[key] = (outputs, output_types)
    return _plan_of(df, ref, specs, arg_names, keep, outputs, output_types, options, device, policy)


def _probe_outputs(
    engine: Engine, batch: Any, policy: BadRowPolicy
) -> tuple[list[str], list[torch.Tensor]]:
    """The outputs of the probe batch; with a policy that isolates bad rows,
    those of its rows that succeed (the probe fails only if none does)."""
    try:
        return out.flatten(engine.run(batch))
    except Exception as e:
        if not policy.isolates:
            raise
        for segment in isolate(engine.run, batch, e):
            if segment.outputs is not None:
                return segment.outputs
        raise


def engine_inputs(specs: list[Input], names: list[str] | None) -> Inputs:
    """The Inputs as the engine takes them: by argument name when given so."""
    return dict(zip(names, specs, strict=True)) if names is not None else list(specs)


def _ship_tokenizer(spec: Input, sc: Any) -> Input:
    if spec.resolved_kind != "text" or not isinstance(spec.tokenizer, str):
        return spec
    return dataclasses.replace(spec, tokenizer=ship(spec.tokenizer, sc))


def _plan_of(
    df: Any,
    ref: ModelRef,
    specs: list[Input],
    names: list[str] | None,
    keep: list[str],
    outputs: list[str],
    output_types: list[Any],
    options: dict[str, Any],
    device: str,
    policy: BadRowPolicy = RAISE,
) -> Plan:
    from pyspark.sql import types as T

    added = [*outputs, *([policy.error_column] if policy.error_column_added else [])]
    clash = [n for n in added if n in keep]
    if clash or len(set(added)) != len(added):
        raise ValueError(
            f"output columns {added} clash with each other or with kept columns {keep}; "
            "name them with output=[...] (the error column with error_column=...) or drop "
            "them with keep=[...]"
        )
    planned = Plan(ref, specs, names, keep, outputs, output_types, None, options, device, policy)
    # With on_error="null" a bad row's outputs are null.
    nullable = policy.on_error == "null"
    fields = [df.schema[c] for c in keep] + [
        T.StructField(n, t, nullable=nullable or n == policy.error_column_added)
        for n, t in zip(planned.columns, planned.column_types, strict=True)
    ]
    planned.schema = T.StructType(fields)
    return planned


def _outputs_of_empty(df: Any, schema: Any, ref: ModelRef) -> tuple[list[str], list[Any]]:
    """An empty DataFrame has no probe batch: the output schema must be given."""
    if schema is None:
        raise ValueError(
            f"model '{ref.name}': the DataFrame is empty, so no probe batch can show what the "
            "model returns; pass schema= (the output columns, e.g. 'prediction float')"
        )
    struct = as_struct(schema)
    return [f.name for f in struct.fields], [f.dataType for f in struct.fields]


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


# torch's messages for inputs of the wrong width: linear/matmul and convolutions.
_MATMUL = re.compile(r"mat1 and mat2 shapes cannot be multiplied \((\d+)x(\d+) and (\d+)x(\d+)\)")
_CHANNELS = re.compile(r"to have (\d+) channels, but got (\d+) channels")
_SHAPE_WORDS = ("shape", "size of tensor", "must match the size", "dimension", "channels")


def _shape_error(
    error: Exception, ref: ModelRef, rows: int, specs: Sequence[Input], batch: Any
) -> Exception | None:
    """For a model that rejects the shape of its inputs: the error naming each
    input column and the row shape it gives, and what the model expects where
    torch's message says (None for any other error)."""
    from ..errors import ModelError

    text = str(error)
    matmul, channels = _MATMUL.search(text), _CHANNELS.search(text)
    if not isinstance(error, ModelError) or not (
        matmul or channels or any(w in text for w in _SHAPE_WORDS)
    ):
        return None
    given = []
    widths = set()
    if any(spec.resolved_kind == "text" for spec in specs):
        return None  # one text feeds several arguments: torch's message stands
    try:
        tensors = input_tensors(batch, specs)
    except Exception:
        return None
    for spec, tensor in zip(specs, tensors, strict=True):
        shape = list(tensor.shape)
        widths.add(shape[-1] if len(shape) > 1 else None)
        columns = spec.column_list
        name = f"column '{columns[0]}' gives" if len(columns) == 1 else f"columns {columns} give"
        given.append(f"{name} [N{''.join(f', {d}' for d in shape[1:])}]")
    if matmul is not None:
        got, wanted = int(matmul[2]), int(matmul[3])
        layer = "the model's first layer" if got in widths else "a layer of the model"
        expects = f"{layer} expects {wanted}" + ("" if got in widths else f", got {got}")
    elif channels is not None:
        expects = f"the model expects {channels[1]} channels, got {channels[2]}"
    else:
        expects = f"the model rejects that shape ({_torch_reason(text)})"
    message = (
        f"model '{ref.name}' on a probe batch of {rows} rows (on the driver): the inputs do not "
        f"fit the model: {'; '.join(given)}; {expects}"
    )
    return type(error)(message)


def _torch_reason(text: str) -> str:
    """The last ``...Error: reason`` line of a (TorchScript) error message."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in reversed(lines):
        found = re.match(r"^\w*(Error|Exception): (.*)$", line)
        if found:
            return found[2]
    return lines[-1] if lines else text


def as_struct(schema: Any) -> Any:
    from pyspark.sql import types as T

    if isinstance(schema, str):
        schema = T._parse_datatype_string(schema)
    if not isinstance(schema, T.StructType):
        raise TypeError(f"schema: expected a StructType or a DDL string, got {schema!r}")
    return schema


def _check_schema(schema: Any, outputs: list[str], output_types: list[Any]) -> None:
    schema = as_struct(schema)
    given = [(f.name, f.dataType) for f in schema.fields]
    derived = list(zip(outputs, output_types, strict=True))

    def strip(t: Any) -> str:
        return t.simpleString()

    if [(n, strip(t)) for n, t in given] != [(n, strip(t)) for n, t in derived]:
        raise ValueError(
            "schema: the model's outputs on the probe batch are "
            + ", ".join(f"{n} {strip(t)}" for n, t in derived)
            + " but the schema says "
            + ", ".join(f"{n} {strip(t)}" for n, t in given)
        )
