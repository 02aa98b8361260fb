"""JVM-side packing: gathered scalar columns with ``Input(pack=True)`` become one array column.

Spark builds ``array(CAST(c0 AS float), ...)`` in the JVM (nulls filled there
with ``nulls="fill"``), so one list column crosses to Python instead of F
separate ones (1.6x cheaper for 64 float columns, benchmarks/RESULTS.md); the
model sees the same ``[rows, F]`` values.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from ..engine import Input
from . import types
from .plan import check_column_types, plan_inputs, quote


def packed(df: Any, inputs: Any, keep: Sequence[str] | None) -> tuple[Any, Any, Any]:
    """``df`` with a packed column per ``pack=True`` input, the inputs reading
    them, and ``keep`` (by default every column of the DataFrame given)."""
    specs, names = plan_inputs(inputs)
    if not any(spec.pack for spec in specs):
        return df, inputs, keep
    check_column_types(df.schema, specs)
    if keep is None:  # every column the user's DataFrame has, not the packed ones
        keep = list(df.columns)
    result = []
    for i, spec in enumerate(specs):
        if not spec.pack:
            result.append(spec)
            continue
        spark_type = types.sql_type(spec.dtype or torch.float32, f"Input({spec.column_list}).pack")
        elements = [f"CAST({quote(c)} AS {spark_type})" for c in spec.column_list]
        if spec.nulls == "fill":
            fill = sql_literal(spec.fill, spark_type)
            elements = [f"COALESCE({e}, {fill})" for e in elements]
        name = f"_torchspark_packed_{i}"
        df = df.selectExpr("*", f"array({', '.join(elements)}) AS {name}")
        # A null here (nulls="error") is reported in this column, input i.
        result.append(Input(name, dtype=spec.dtype, nulls=spec.nulls, fill=spec.fill))
    return df, (dict(zip(names, result, strict=True)) if names else result), keep


def sql_literal(value: float | int | bool, spark_type: str) -> str:
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
